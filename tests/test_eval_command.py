"""``prefopt eval`` (base + runs, intervals, win rates, resumable image cache) and ``prefopt compare``'s
evaluation report, on a tiny SD with the tiny GenEval detector and the tiny CLIP."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import cli, error_lines
from tiny_eval_models import build_mask2former, write_geneval_metadata
from tiny_models import SD_RESOLUTION

from prefopt_backbones.diffusers_base import DiffusersBackbone


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return build_mask2former(tmp_path_factory.mktemp("tiny-mask2former"))


def recipe(root, tiny_sd, tiny_clip, tiny_detector, **extra) -> dict:
    (root / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog under a tree\n")
    metadata = write_geneval_metadata(root / "evaluation_metadata.jsonl")
    return {
        "seed": 0,
        "output_dir": str(root / "run"),
        "backbone": {"name": "sd", "pretrained": str(tiny_sd), "finetune": {"mode": "lora", "rank": 4},
                     "resolution": SD_RESOLUTION, "num_inference_steps": 2},
        "pairs": {"source": {"name": "random_removal"}, "prompts": {"path": "prompts.txt", "min_words": 2}},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 1},
        "eval": [{"name": "geneval", "metadata": str(metadata), "detector": str(tiny_detector),
                  "colour_model": str(tiny_clip), "images_per_prompt": 2, "num_inference_steps": 2},
                 {"name": "clip_score", "model": str(tiny_clip), "prompts": ["a cat", "a red car"],
                  "images_per_prompt": 2}],
        **extra,
    }


def write_recipe(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_sd, tiny_clip, tiny_detector):
    """A finished comparison: an untrained reference variant and a DDSPO variant with a checkpoint."""
    root = tmp_path_factory.mktemp("compare")
    data = recipe(root, tiny_sd, tiny_clip, tiny_detector,
                  compare={"seeds": [0], "variants": {"reference": {"train": {"max_steps": 0}}, "ddspo": {}}})
    data["output_dir"] = str(root / "cmp")
    path = write_recipe(root / "compare.yaml", data)
    code, err = cli("compare", path)
    assert code == 0, err
    return path, root / "cmp"


def test_compare_writes_every_report_file(compared):
    _, root = compared
    for name in ("results.csv", "results.json", "report.md", "comparison.png", "metrics.png", "samples.png"):
        assert (root / name).stat().st_size > 0, name
    report = (root / "report.md").read_text()
    assert "## geneval per category (overall)" in report
    table = [line for line in report.splitlines() if line.startswith("| ddspo |")]
    assert len(table) == 2  # the metric table and the per-category table
    assert "![metrics](metrics.png)" in report and "![samples](samples.png)" in report


def test_eval_scores_base_and_runs_with_intervals_and_win_rates(compared, monkeypatch):
    path, root = compared
    run_dir = root / "ddspo" / "seed-0"
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[0]
    weights = ["--weights", run_dir / "final", "--weights", checkpoint]
    code, err = cli("eval", path, *weights)
    assert code == 0, err
    report = json.loads((root / "eval" / "eval.json").read_text())
    assert list(report["models"]) == ["base", "ddspo/seed-0", f"ddspo/seed-0@{checkpoint.name}"]
    for name, entry in report["models"].items():
        metrics, intervals = entry["metrics"], entry["ci95"]
        assert {"geneval/overall", "geneval/counting", "clip/score"} <= set(metrics)
        for metric, (low, high) in intervals.items():
            assert low <= metrics[metric] <= high, (name, metric)
        if name == "base":
            assert entry["win_rate"] == {}
        else:
            assert set(entry["win_rate"]) == {"geneval/overall", "clip/score"}
            assert all(0.0 <= v <= 1.0 for v in entry["win_rate"].values())
    # Training at lr 1e-2 moved the student: each model's CLIP scores differ on the same seeds.
    records = [json.loads(line) for line in (root / "eval" / "clip_results.jsonl").read_text().splitlines()]
    scores = {name: [r["scores"]["score"] for r in records if r["model"] == name] for name in report["models"]}
    base, final, early = scores.values()
    assert len(base) == len(final) == len(early) == 4
    assert base != final and base != early and early != final
    wins = [1.0 if f > b else 0.5 if f == b else 0.0 for f, b in zip(final, base)]
    assert report["models"]["ddspo/seed-0"]["win_rate"]["clip/score"] == pytest.approx(sum(wins) / len(wins))

    # Every image is cached with its seed: a second evaluation draws nothing and finds the same numbers.
    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached image was drawn again")

    monkeypatch.setattr(DiffusersBackbone, "sample", no_sampling)
    code, err = cli("eval", path, *weights)
    assert code == 0, err
    assert json.loads((root / "eval" / "eval.json").read_text()) == report


def test_eval_refuses_missing_weights_in_one_line(compared, tmp_path):
    path, _ = compared
    code, err = cli("eval", path, "--weights", tmp_path / "nowhere")
    assert code == 2 and len(error_lines(err)) == 1 and "no trained weights" in err
