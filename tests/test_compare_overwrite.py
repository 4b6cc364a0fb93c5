"""prefopt compare clears a variant's directory only when told to, as prefopt run does."""

from __future__ import annotations

from helpers import cli, error_lines, write_toy_recipe

FAST = {"pretrain": False, "train": {"max_steps": 2, "checkpoint_every": 0}}


def test_a_filled_variant_directory_is_refused_before_any_run_and_kept(tmp_path):
    root = tmp_path / "cmp"
    recipe = write_toy_recipe(tmp_path, root, **FAST,
                              compare={"variants": {"ddspo": {}, "dpo": {"objective": {"name": "diffusion_dpo"}}},
                                       "seeds": [0]})
    notes = root / "dpo" / "seed-0" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")

    code, err = cli("compare", str(recipe))
    assert code == 2
    [line] = error_lines(err)
    assert "seed-0 is not empty (1 of the 2 variant run directories are)" in line and "--overwrite" in line
    assert notes.read_text() == "my notes"
    assert not (root / "ddspo").exists()  # refused before the first variant ran

    assert cli("compare", str(recipe), "--overwrite")[0] == 0
    assert not notes.exists() and (root / "results.csv").is_file()
