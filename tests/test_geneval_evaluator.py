"""The ``geneval`` evaluator end to end: a tiny random Mask2Former and CLIP loaded from disk, a tiny SD."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_eval_models import GENEVAL_ROWS, build_mask2former, write_geneval_metadata
from tiny_models import load_backbone

from prefopt.errors import DataError
from prefopt.evaluation import score_images, summarise
from prefopt_backbones.sd import SDBackbone
from prefopt_evaluators.geneval import GenEval
from prefopt_evaluators.geneval_detector import Mask2FormerDetector
from prefopt_evaluators.geneval_rules import COLOURS

ROWS = GENEVAL_ROWS


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return build_mask2former(tmp_path_factory.mktemp("tiny-mask2former"))


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    return write_geneval_metadata(tmp_path_factory.mktemp("geneval") / "evaluation_metadata.jsonl")


@pytest.fixture(scope="module")
def backbone(tiny_sd):
    # LoRA: the untrained adapter is zero, so the student draws exactly the reference's images.
    return load_backbone(SDBackbone, tiny_sd, mode="lora")


def evaluator(metadata, tiny_detector, tiny_clip, **settings) -> GenEval:
    settings = {"metadata": str(metadata), "detector": str(tiny_detector), "colour_model": str(tiny_clip),
                "detector_size": (64, 128),
                "images_per_prompt": 2, "num_inference_steps": 2, "guidance_scale": 7.5, "batch_size": 3,
                **settings}
    return GenEval(GenEval.Config(**settings))


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((24, 20, 3)) * 255).astype("uint8")) for _ in range(n)]


@pytest.fixture(scope="module")
def detector(tiny_detector, tiny_clip):
    return Mask2FormerDetector(str(tiny_detector), str(tiny_clip), torch.device("cpu"), "float32", size=(64, 128))


def test_images_are_resized_to_the_configured_sides(detector):
    picture = images(1)[0]  # 20 × 24: the shorter side goes to the limit, the aspect stays
    seen = []
    model = detector.model
    original = model.forward

    def spy(pixel_values, **kwargs):
        seen.append(tuple(pixel_values.shape[-2:]))
        return original(pixel_values=pixel_values, **kwargs)

    model.forward = spy
    try:
        with torch.inference_mode():
            detector.detect([picture])
    finally:
        model.forward = original
    assert seen == [(96, 64)]  # 24 × 20 scaled to a shorter side of 64 (76.8), rounded up to a multiple of 32


def test_detector_is_finite_deterministic_and_batch_independent(detector):
    pictures = images(3)
    with torch.inference_mode():
        batched = detector.detect(pictures)
        again = detector.detect(pictures)
        alone = [detector.detect([picture])[0] for picture in pictures]
    for found, repeat, single, picture in zip(batched, again, alone, pictures):
        assert len(found) == 12  # one detection per query of the tiny model
        assert [(d.label, d.score, d.box) for d in found] == [(d.label, d.score, d.box) for d in repeat]
        assert [d.label for d in found] == [d.label for d in single]
        assert np.allclose([d.score for d in found], [d.score for d in single], atol=1e-5)
        for d in found:
            assert 0.0 <= d.score <= 1.0 and math.isfinite(d.score)
            assert d.mask.shape == (picture.height, picture.width) and d.mask.dtype == bool
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= picture.width and 0 <= y0 <= y1 <= picture.height
    scores = [d.score for found in batched for d in found]
    assert min(scores) < 0.3 < max(scores), "the tiny detector should straddle GenEval's threshold"


def test_colours_are_named_deterministically(detector):
    picture = images(1)[0]
    with torch.inference_mode():
        found = detector.detect([picture])[0][:4]
        colours = detector.classify_colours(picture, found, "car")
        one_by_one = [detector.classify_colours(picture, [d], "car")[0] for d in found]
    assert all(c in COLOURS for c in colours)
    assert colours == one_by_one


def test_unknown_class_is_refused(detector):
    with pytest.raises(DataError, match="no class 'giraffe'"):
        detector.check_classes([{"tag": "single_object", "include": [{"class": "giraffe", "count": 1}]}])


@pytest.fixture(scope="module")
def untrained_run(metadata, tiny_detector, tiny_clip, backbone, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return evaluator(metadata, tiny_detector, tiny_clip).evaluate(backbone, str(run_dir), seed=0), run_dir


def read_results(run_dir):
    return [json.loads(line) for line in (run_dir / "geneval_results.jsonl").read_text().splitlines()]


def test_scores_per_tag_overall_and_results_file(untrained_run):
    metrics, run_dir = untrained_run
    tags = [row["tag"] for row in ROWS]
    assert {f"geneval/{tag}" for tag in tags} | {"geneval/overall"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    results = [r for r in read_results(run_dir) if r["model"] == "student"]
    assert len(results) == 2 * len(ROWS) and len({r["seed"] for r in results}) == len(results)
    for tag in tags:
        verdicts = [r["scores"]["overall"] for r in results if r["group"] == tag]
        assert metrics[f"geneval/{tag}"] == pytest.approx(sum(verdicts) / len(verdicts))
    assert metrics["geneval/overall"] == pytest.approx(np.mean([metrics[f"geneval/{t}"] for t in tags]))
    for r in results:  # a failed image says why; a correct one has nothing to say
        assert (r["reason"] == "") == (r["scores"]["overall"] == 1.0)
        assert (run_dir / r["image"]).is_file()
    # The untrained adapter draws the reference's images: every row ties.
    assert metrics["geneval/overall/win_rate"] == 0.5
    assert metrics["geneval/reference/overall"] == metrics["geneval/overall"]


def test_rescoring_reuses_cached_images_and_batching_changes_nothing(untrained_run, metadata, tiny_detector,
                                                                     tiny_clip, backbone, monkeypatch):
    metrics, run_dir = untrained_run
    cached = sorted((run_dir / "eval_images").rglob("*.png"))
    assert len(cached) == 2 * 2 * len(ROWS)  # student and reference, every row once

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached image was drawn again")

    monkeypatch.setattr(backbone, "sample", no_sampling)
    again = evaluator(metadata, tiny_detector, tiny_clip, batch_size=1).evaluate(backbone, str(run_dir), seed=0)
    assert again == pytest.approx(metrics, abs=1e-9)


def test_prompts_per_tag_takes_the_first_of_each_tag(metadata, tiny_detector, tiny_clip, tmp_path):
    doubled = tmp_path / "meta.jsonl"
    doubled.write_text(metadata.read_text() + json.dumps({**ROWS[0], "prompt": "a dog"}) + "\n")
    chosen = evaluator(doubled, tiny_detector, tiny_clip, prompts_per_tag=1).metadata()
    assert [row["prompt"] for row in chosen] == [row["prompt"] for row in ROWS]


# ------------------------------------------------------------------ a detector of its own, plugged in

PALETTE = {(255, 0, 0): ("cat", "red"), (0, 0, 255): ("cat", "blue"), (0, 160, 0): ("dog", "green")}
SCENE_ROWS = [
    {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"},
    {"tag": "position", "include": [{"class": "dog", "count": 1},
                                    {"class": "cat", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a cat left of a dog"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
     "prompt": "a photo of two dogs"},
]


def squares(pixels, palette) -> list:
    """Each run of columns of one palette colour is one square: a detection with its class, colour and mask."""
    from prefopt_evaluators.geneval_rules import Detection

    found = []
    for rgb, (label, colour) in palette.items():
        mask = (pixels == np.array(rgb)).all(axis=-1)
        columns = np.flatnonzero(mask.any(axis=0))
        # Squares of one colour never share a column in these scenes.
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if len(columns) else []:
            part = np.zeros_like(mask)
            part[:, run] = mask[:, run]
            ys = np.flatnonzero(part.any(axis=1))
            box = (float(run[0]), float(ys[0]), float(run[-1] + 1), float(ys[-1] + 1))
            found.append(Detection(label, 0.95, box, part, colour))
    return found


class SquareDetector:
    """Scenes of solid squares on white: each square is one object, its class and colour from the palette."""

    def detect(self, images):
        return [squares(np.asarray(image), PALETTE) for image in images]

    def classify_colours(self, image, detections, label):
        raise AssertionError("detections carry their colour")


class SceneGenEval(GenEval):
    """GenEval's evaluator with another detector plugged in, as a benchmark of its own would."""

    name = "scene_geneval"

    def load_scorer(self, device):
        return SquareDetector()


def scene(squares) -> Image.Image:
    """A 40×40 white canvas with 8×8 squares: [(rgb, x, y), ...]."""
    canvas = np.full((40, 40, 3), 255, dtype=np.uint8)
    for rgb, x, y in squares:
        canvas[y:y + 8, x:x + 8] = rgb
    return Image.fromarray(canvas)


def test_a_plugged_in_detector_orders_scenes_of_their_prompt_above_others(tmp_path):
    """GenEval's rules through the evaluator with another detector: right scenes pass, wrong ones fail."""
    metadata = tmp_path / "scenes.jsonl"
    metadata.write_text("".join(json.dumps(r) + "\n" for r in SCENE_ROWS))
    evaluator = SceneGenEval(GenEval.Config(metadata=str(metadata), images_per_prompt=1))
    rows = evaluator.eval_rows()
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 160, 0)
    right = [scene([(red, 16, 16)]), scene([(blue, 2, 16), (green, 28, 16)]),
             scene([(green, 2, 16), (green, 28, 16)])]
    # Each scene drawn for another prompt of the same tag: a blue cat, a cat right of the dog, three dogs.
    wrong = [scene([(blue, 16, 16)]), scene([(blue, 28, 16), (green, 2, 16)]),
             scene([(green, 2, 16), (green, 16, 16), (green, 30, 16)])]
    good = score_images(evaluator, evaluator.load_scorer(None), right, rows)
    bad = score_images(evaluator, evaluator.load_scorer(None), wrong, rows)
    assert good.per_image["overall"] == [1.0, 1.0, 1.0], [r["reason"] for r in good.records]
    assert bad.per_image["overall"] == [0.0, 0.0, 0.0]
    assert [r["reason"] for r in bad.records] == [
        "expected red cat>=1, found 0 red (1 blue)",
        "expected cat left of target, found right of target",
        "expected dog<3, found 3",
    ]
    assert summarise("geneval", good, rows)["geneval/overall"] == 1.0
    assert summarise("geneval", bad, rows)["geneval/overall"] == 0.0
