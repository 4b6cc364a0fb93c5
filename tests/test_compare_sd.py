"""`prefopt compare` on a text-to-image backbone: tiny SD, random-removal pairs, and the paper's kind of metrics
(CLIP score, GenEval, T2I-CompBench spatial on tiny random scorers); every report file is written and holds what
it should."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from helpers import cli
from PIL import Image
from tiny_eval_models import GENEVAL_ROWS, build_mask2former, write_geneval_metadata
from tiny_models import SD_RESOLUTION

VARIANTS = ("reference", "diffusion_dpo", "ddspo")
METRICS = ("clip/score", "geneval/overall", "compbench_spatial/spatial")


def picture(path):
    """The PNG at path, decoded and checked to be more than one flat colour."""
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and np.asarray(image.convert("L")).std() > 0, path
    return image


def test_compare_runs_every_variant_on_shared_pairs_and_reports(tmp_path, tiny_sd, tiny_clip):
    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog under a tree\n")
    detector = build_mask2former(tmp_path / "tiny-mask2former")
    metadata = write_geneval_metadata(tmp_path / "evaluation_metadata.jsonl", GENEVAL_ROWS[:2])
    recipe = {
        "seed": 0,
        "output_dir": str(tmp_path / "cmp"),
        "backbone": {"name": "sd", "pretrained": str(tiny_sd), "finetune": {"mode": "lora", "rank": 4},
                     "resolution": SD_RESOLUTION, "num_inference_steps": 2},
        "pairs": {"source": {"name": "random_removal"}, "prompts": {"path": "prompts.txt", "min_words": 2}},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 0},
        "eval": [{"name": "clip_score", "model": str(tiny_clip), "prompts": ["a cat", "a red car"],
                  "images_per_prompt": 1},
                 {"name": "geneval", "metadata": str(metadata), "detector": str(detector),
                  "colour_model": str(tiny_clip), "detector_size": [64, 128], "images_per_prompt": 1,
                  "num_inference_steps": 2},
                 {"name": "t2i_compbench", "part": "spatial", "detector": str(detector),
                  "detector_size": [64, 128], "prompts": ["a dog near a mouse"],
                  "aliases": {"mouse": "computer mouse"}, "images_per_prompt": 1, "prefix": "compbench_spatial"}],
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

    # results.csv and results.json: every variant, every metric.
    rows = {row["variant"]: row for row in csv.DictReader(open(root / "results.csv"))}
    assert set(rows) == set(VARIANTS)
    for row in rows.values():
        assert {f"{m}_mean" for m in METRICS} <= set(row)
    # An untrained LoRA student draws exactly the reference's images: a tie.
    assert float(rows["reference"]["clip/win_rate_mean"]) == 0.5
    results = json.loads((root / "results.json").read_text())
    assert set(results) == set(VARIANTS) and all(set(METRICS) <= set(runs[0]) for runs in results.values())

    # Each variant's run: its weights, eval.json with every evaluator's metrics, per-image results with images.
    for name in VARIANTS:
        run = root / name / "seed-0"
        assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
        scores = json.loads((run / "eval.json").read_text())
        for metric in METRICS:  # results.csv holds the same numbers to 4 decimals
            assert abs(scores[metric] - float(rows[name][f"{metric}_mean"])) <= 5e-5, (name, metric)
        for prefix in ("clip", "geneval", "compbench_spatial"):
            records = [json.loads(line) for line in (run / f"{prefix}_results.jsonl").read_text().splitlines()]
            assert records and all((run / r["image"]).is_file() for r in records)
    # Every variant trained on the one pair dataset built for the seed.
    assert (root / "seed-0" / "pairs" / "manifest.json").is_file()
    assert not any((root / name / "seed-0" / "pairs").exists() for name in VARIANTS)

    # report.md: the metric table, the per-category GenEval table, and the figures it links.
    report = (root / "report.md").read_text()
    for name in VARIANTS:
        assert len([line for line in report.splitlines() if line.startswith(f"| {name} |")]) == 2, name
    table = report.split("## geneval per category (overall)")[1]
    assert "| method | single_object | colors | overall |" in table and "| base model |" in table
    for figure in ("comparison.png", "metrics.png", "samples.png"):
        assert f"({figure})" in report
    picture(root / "comparison.png")
    # Shapes from the layouts' cell sizes: a 4.2 × 3.2 in panel per per-image metric, three abreast; a
    # 2.2 × 2.4 in cell per image, a row per method (the base model and three variants), a column per CLIP prompt.
    charts = picture(root / "metrics.png")
    assert charts.width / charts.height == pytest.approx(3 * 4.2 / 3.2, rel=0.02)
    grid = picture(root / "samples.png")
    assert grid.height / grid.width == pytest.approx(4 * 2.4 / (2 * 2.2), rel=0.02)
