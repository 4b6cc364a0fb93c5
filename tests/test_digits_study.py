"""The digit-scenes study reduced to seconds: composing, pretraining, pair sampling, training, scoring, report.

The shipped recipes/digits_compare.yaml with a pretrain stage from an untrained
digit pipeline, and every size cut down (few scenes, steps, prompts, images).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from helpers import cli

pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[1]
TRAIN_PROMPTS = REPO / "plugins" / "prefopt_digits" / "prompt_sets" / "train.jsonl"


@pytest.fixture(scope="module")
def untrained_digits(tmp_path_factory) -> Path:
    from prefopt_digits.model import build_untrained

    return build_untrained(tmp_path_factory.mktemp("digits") / "init")


def test_reduced_digits_study_runs_every_stage(tmp_path, untrained_digits):
    recipe = yaml.safe_load((REPO / "recipes" / "digits_compare.yaml").read_text())
    recipe["output_dir"] = str(tmp_path / "study")
    recipe["backbone"].update(pretrained=str(untrained_digits), num_inference_steps=2)
    recipe["pretrain"] = {
        "pairs": {"source": {"name": "digit_scenes", "scenes": 32}},
        "objective": {"name": "denoise"},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 0},
    }
    prompts = {"path": str(TRAIN_PROMPTS), "max_count": 4}
    recipe["pairs"].update(prompts=prompts, sample_batch_size=8)
    recipe["train"].update(max_steps=2, batch_size=2)
    recipe["eval"][0].update(prompts_per_tag=1, images_per_prompt=1, batch_size=8)  # student only
    variants = recipe["compare"]["variants"]
    variants["ddspo_not_paired"]["pairs"]["prompts"] = prompts
    recipe["compare"] = {"seeds": [0], "variants": {k: variants[k] for k in ("reference", "ddspo", "ddspo_not_paired")}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))

    code, err = cli("compare", path)
    assert code == 0, err
    root = tmp_path / "study"
    # composing + pretraining: the reference was trained on composed scenes, then saved as a pipeline
    assert (root / "seed-0" / "reference" / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # pair sampling from that reference on the training prompts, shared by the paired variants
    manifest = json.loads((root / "seed-0" / "pairs" / "manifest.json").read_text())
    assert manifest["pairs"]["source"]["name"] == "random_removal"
    # scoring: one verdict per image, six tags, Overall the mean of the tags
    rows = {row["variant"]: row for row in csv.DictReader(open(root / "results.csv"))}
    assert set(rows) == {"reference", "ddspo", "ddspo_not_paired"}
    for name, row in rows.items():
        tags = [float(row[f"geneval/{t}_mean"]) for t in
                ("single_object", "two_object", "counting", "colors", "position", "color_attr")]
        assert float(row["geneval/overall_mean"]) == pytest.approx(sum(tags) / 6, abs=1e-3)
        records = (root / name / "seed-0" / "geneval_results.jsonl").read_text().splitlines()
        assert len(records) == 6
    report = (root / "report.md").read_text()
    assert "| ddspo |" in report and (root / "metrics.png").stat().st_size > 0
    assert (root / "samples.png").stat().st_size > 0
