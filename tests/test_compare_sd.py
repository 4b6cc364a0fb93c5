"""`prefopt compare` on a text-to-image backbone: tiny SD, random-removal pairs, CLIP score."""

from __future__ import annotations

import csv

import yaml
from helpers import cli
from tiny_models import SD_RESOLUTION


def test_compare_runs_every_variant_on_shared_pairs_and_reports(tmp_path, tiny_sd, tiny_clip):
    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog under a tree\n")
    recipe = {
        "seed": 0,
        "output_dir": str(tmp_path / "cmp"),
        "backbone": {"name": "sd", "pretrained": str(tiny_sd), "finetune": {"mode": "lora", "rank": 4},
                     "resolution": SD_RESOLUTION, "num_inference_steps": 2},
        "pairs": {"source": {"name": "random_removal"}, "prompts": {"path": "prompts.txt", "min_words": 2}},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 0},
        "eval": [{"name": "clip_score", "model": str(tiny_clip), "prompts": ["a cat", "a red car"],
                  "images_per_prompt": 1}],
        "compare": {"seeds": [0], "variants": {
            "reference": {"train": {"max_steps": 0}},
            "diffusion_dpo": {"objective": {"name": "diffusion_dpo", "beta": 5000}},
            "ddspo": {},
        }},
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))

    code, err = cli("compare", path)
    assert code == 0, err
    root = tmp_path / "cmp"
    rows = {row["variant"]: row for row in csv.DictReader(open(root / "results.csv"))}
    assert set(rows) == {"reference", "diffusion_dpo", "ddspo"}
    # An untrained LoRA student draws exactly the reference's images: a tie.
    assert float(rows["reference"]["clip/win_rate_mean"]) == 0.5
    for name in rows:
        assert (root / name / "seed-0" / "final" / "pytorch_lora_weights.safetensors").is_file()
    # Every variant trained on the one pair dataset built for the seed.
    assert (root / "seed-0" / "pairs" / "manifest.json").is_file()
    assert not any((root / name / "seed-0" / "pairs").exists() for name in rows)
    assert (root / "comparison.png").stat().st_size > 0
    assert "| ddspo |" in (root / "report.md").read_text()
