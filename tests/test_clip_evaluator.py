"""The ``clip_score`` evaluator on a tiny random CLIP and a tiny Stable Diffusion (CPU, offline)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from fixtures.dists import REPO_ROOT, run_cli
from PIL import Image
from pydantic import ValidationError
from tiny_models import PROMPTS, load_backbone

from prefopt.interfaces import STUDENT
from prefopt_backbones.sd import SDBackbone
from prefopt_evaluators.clip_score import ClipScore

KEYS = {"clip/score", "clip/score_std", "clip/reference_score", "clip/win_rate"}


@pytest.fixture(scope="module")
def backbone(tiny_sd):
    # LoRA: the untrained adapter is zero, so the student draws exactly the reference's images.
    return load_backbone(SDBackbone, tiny_sd, mode="lora")


def evaluator(tiny_clip, **settings) -> ClipScore:
    # 4 rows in batches of 3: one full and one partial batch.
    settings = {"model": str(tiny_clip), "prompts": PROMPTS[:2], "images_per_prompt": 2, "batch_size": 3,
                **settings}
    return ClipScore(ClipScore.Config(**settings))


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def untrained_run(tiny_clip, backbone, tmp_path_factory):
    """(metrics, run_dir) of one evaluation of the untrained model."""
    run_dir = tmp_path_factory.mktemp("run")
    return evaluator(tiny_clip).evaluate(backbone, str(run_dir), seed=0), run_dir


def independent_scores(tiny_clip, images, prompts) -> list[float]:
    """100 · max(cos, 0) through CLIPModel's own forward, one image at a time."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    scores = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            out = model(**processor(text=[prompt], images=[image], return_tensors="pt", padding=True))
            cosine = float(out.logits_per_image[0, 0] / model.logit_scale.exp())
            scores.append(100.0 * max(cosine, 0.0))
    return scores


def test_metrics_and_outputs(untrained_run):
    metrics, run_dir = untrained_run
    assert set(metrics) == KEYS
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    rows = read_rows(run_dir / "clip_scores.csv")
    assert [row["prompt"] for row in rows] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert len({row["seed"] for row in rows}) == 4, "every image has its own seed"
    assert (run_dir / "clip_samples.png").is_file()
    for source in ("student", "reference"):
        assert sorted(p.name for p in (run_dir / "clip_images" / source).iterdir()) == [f"{i}.png" for i in range(4)]


def test_score_matches_an_independent_clip_computation(untrained_run, tiny_clip, backbone):
    metrics, run_dir = untrained_run
    rows = read_rows(run_dir / "clip_scores.csv")
    prompts, seeds = [row["prompt"] for row in rows], [int(row["seed"]) for row in rows]
    images = backbone.decode(backbone.sample(prompts, seeds, source=STUDENT))
    saved = [Image.open(run_dir / "clip_images" / "student" / f"{i}.png") for i in range(len(rows))]
    # The same rows drawn in one batch instead of two: equal up to float noise.
    for image, stored in zip(images, saved):
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(stored, dtype=int)).max() <= 1

    expected = independent_scores(tiny_clip, saved, prompts)
    assert len(set(expected)) == len(expected) and min(expected) > 0, expected
    assert [float(row["student_score"]) for row in rows] == pytest.approx(expected, abs=1e-4)
    assert metrics["clip/score"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    assert metrics["clip/score_std"] == pytest.approx(torch.tensor(expected).std(unbiased=False).item(), abs=1e-4)


def test_untrained_student_ties_the_reference(untrained_run):
    metrics, run_dir = untrained_run
    assert metrics["clip/win_rate"] == 0.5
    assert metrics["clip/reference_score"] == metrics["clip/score"]
    assert all(row["student_score"] == row["reference_score"] for row in read_rows(run_dir / "clip_scores.csv"))


def test_same_seed_same_score_other_seed_other_images(untrained_run, tiny_clip, backbone, tmp_path):
    metrics, _ = untrained_run
    again = tmp_path / "again"
    again.mkdir()
    assert evaluator(tiny_clip).evaluate(backbone, str(again), seed=0) == metrics
    other = evaluator(tiny_clip, seed=99, compare_reference=False).evaluate(backbone, str(tmp_path), seed=0)
    assert set(other) == {"clip/score", "clip/score_std"}
    assert other["clip/score"] != metrics["clip/score"]
    assert not (tmp_path / "clip_images" / "reference").exists()
    assert {row["reference_score"] for row in read_rows(tmp_path / "clip_scores.csv")} == {""}


def test_win_rate_of_a_changed_student(untrained_run, tiny_clip, tiny_sd, tmp_path):
    untrained, _ = untrained_run
    changed = load_backbone(SDBackbone, tiny_sd, mode="lora")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a stand-in for training: nonzero adapters change the student only
        for name, param in changed.trainable_module().named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    metrics = evaluator(tiny_clip, prefix="pickscore").evaluate(changed, str(tmp_path), seed=0)

    assert set(metrics) == {key.replace("clip/", "pickscore/") for key in KEYS}
    assert metrics["pickscore/reference_score"] == pytest.approx(untrained["clip/reference_score"], abs=1e-5)
    rows = read_rows(tmp_path / "pickscore_scores.csv")
    student = [float(row["student_score"]) for row in rows]
    reference = [float(row["reference_score"]) for row in rows]
    assert student != reference
    wins = [1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(student, reference)]
    assert metrics["pickscore/win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert (tmp_path / "pickscore_samples.png").is_file()


def test_comparison_figure(untrained_run, tiny_clip, tmp_path):
    _, run_dir = untrained_run
    runs = {"ddspo": run_dir, "diffusion_dpo": run_dir, "crashed": tmp_path / "missing"}
    path = evaluator(tiny_clip).comparison_figure(runs, tmp_path, tmp_path / "comparison.png")
    assert path == tmp_path / "comparison.png"
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.height > figure.width, "three rows (reference, 2 runs) of 2"
    assert evaluator(tiny_clip).comparison_figure({"crashed": tmp_path / "missing"}, tmp_path, tmp_path / "x.png") \
        is None


def test_prompts_file(tmp_path):
    prompts = tmp_path / "eval.txt"
    prompts.write_text("a red car\n\na dog  under a tree\na red car\n")
    config = ClipScore.Config(prompts_file=str(prompts))
    assert config.prompts_file.path == str(prompts)
    assert ClipScore(config).prompts() == ["a red car", "a dog under a tree"]
    limited = ClipScore(ClipScore.Config(prompts_file={"path": str(prompts), "max_count": 1}))
    assert limited.prompts() == ["a red car"]
    assert [seed for _, seed in limited.rows()] == [1234 * 1_000_003, 1234 * 1_000_003 + 1]


@pytest.mark.parametrize("bad", [{"prefix": "a/b"}, {"prompts": []}, {"images_per_prompt": 0}, {"scale": 0},
                                 {"name": "clip"}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        ClipScore.Config(**bad)


def test_recipe_with_the_evaluator_validates_without_torch(tmp_path):
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "toy2d_ddspo.yaml").read_text())
    recipe["eval"].append({"name": "clip_score", "model": "yuvalkirstain/PickScore_v1",
                           "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "prefix": "pickscore",
                           "prompts_file": {"path": "eval.txt", "max_count": 100}})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, stdout, stderr, heavy = run_cli(["validate", str(path)])
    assert code == 0, stderr
    assert "ok" in stdout and heavy == []

    recipe["eval"][-1]["images_per_prompt"] = 0
    path.write_text(yaml.safe_dump(recipe))
    code, _, stderr, heavy = run_cli(["validate", str(path)])
    assert code != 0 and "eval.1.images_per_prompt" in stderr and heavy == []
