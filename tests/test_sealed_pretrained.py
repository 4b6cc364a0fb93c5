"""A run's final/ used as another run's backbone.pretrained is checked against its integrity record first."""

from __future__ import annotations

import shutil

import pytest

from helpers import cli, error_lines, write_toy_recipe

FAST = {"pretrain": False, "train": {"max_steps": 2, "checkpoint_every": 0}}


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sealed")
    assert cli("run", str(write_toy_recipe(directory, **FAST)))[0] == 0
    return directory / "run" / "final"


def _weights(directory):
    [weights] = directory.rglob("*.safetensors")
    return weights


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_flipped_byte_in_a_sealed_pretrained_directory_is_refused(final, tmp_path, command):
    copy = tmp_path / "pretrained"
    shutil.copytree(final, copy)
    weights = _weights(copy)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    recipe = write_toy_recipe(tmp_path, **FAST, backbone={"pretrained": str(copy)},
                              eval=[{"name": "toy2d_modes", "samples_per_condition": 10}])

    extra = ["--weights", str(final)] if command == "eval" else []  # eval scores these on top of the base
    code, err = cli(command, str(recipe), *extra)
    assert code == 2
    [line] = error_lines(err)
    assert "pretrained weights file" in line and "is damaged" in line and "integrity.json" in line
    assert not (tmp_path / "run" / "final").exists()


def test_an_intact_sealed_directory_and_an_unsealed_one_load(final, tmp_path):
    copy = tmp_path / "pretrained"
    shutil.copytree(final, copy)
    assert cli("run", str(write_toy_recipe(tmp_path, **FAST, backbone={"pretrained": str(copy)})))[0] == 0
    (copy / "integrity.json").unlink()  # the user's own choice: use the directory as it is
    recipe = write_toy_recipe(tmp_path, tmp_path / "run2", name="again.yaml", **FAST,
                              backbone={"pretrained": str(copy)})
    assert cli("run", str(recipe))[0] == 0


@pytest.mark.parametrize("where", ["inside the weights", "a run directory"])
def test_eval_output_inside_sealed_weights_or_a_run_directory_is_refused(final, tmp_path, where):
    recipe = write_toy_recipe(tmp_path, **FAST, eval=[{"name": "toy2d_modes", "samples_per_condition": 10}])
    output = final / "scores" if where == "inside the weights" else final.parent
    before = sorted(p.name for p in output.parent.iterdir())
    code, err = cli("eval", str(recipe), "--weights", str(final), "--output", str(output))
    assert code == 2
    [line] = error_lines(err)
    assert ("is sealed weights" if where == "inside the weights" else "is a run directory") in line
    assert sorted(p.name for p in output.parent.iterdir()) == before


def test_eval_refuses_a_link_planted_at_its_default_output(final, tmp_path):
    run_dir = final.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = write_toy_recipe(tmp_path, run_dir, **FAST, eval=[{"name": "toy2d_modes", "samples_per_condition": 10}])
    (run_dir / "eval").symlink_to(elsewhere)
    try:
        code, err = cli("eval", str(recipe))
        assert code == 2
        [line] = error_lines(err)
        assert f"{run_dir / 'eval'} is a symbolic link" in line
        assert list(elsewhere.iterdir()) == []
    finally:
        (run_dir / "eval").unlink()
