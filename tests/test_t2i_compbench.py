"""``t2i_compbench``: BLIP-VQA attribute binding on a tiny random BlipForQuestionAnswering saved to disk, and the
spatial part: its rule on constructed detections, and the evaluator with a tiny random Mask2Former."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_eval_models import build_blip_vqa, build_mask2former
from transformers import BlipForQuestionAnswering, BlipProcessor

from prefopt.errors import DataError
from prefopt.evaluation import EvalRow, score_images, summarise
from prefopt_evaluators.compbench_spatial import frame_scale, judge_spatial, parse_spatial, position_score
from prefopt_evaluators.geneval_rules import Detection
from prefopt_evaluators.t2i_compbench import T2ICompBench, noun_phrases

PROMPTS = ["a red car and a blue tree", "a photo of a green dog", "a red cat, a blue car and a green tree"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    return build_blip_vqa(tmp_path_factory.mktemp("tiny-blip"))


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")) for _ in range(n)]


def test_noun_phrases_of_attribute_binding_prompts():
    assert noun_phrases("a green bench and a red car") == ["a green bench", "a red car"]
    assert noun_phrases("a red cat, a blue car and a green tree.") == ["a red cat", "a blue car", "a green tree"]
    assert noun_phrases("a leather jacket with a glass bowl on the left") == ["a leather jacket",
                                                                               "a glass bowl on the left"]


def p_yes_from_the_models_own_loss(tiny_blip, image, question) -> float:
    """P(yes) from BlipForQuestionAnswering's forward with labels (mean token loss × answer tokens)."""
    model, processor = BlipForQuestionAnswering.from_pretrained(tiny_blip).eval(), BlipProcessor.from_pretrained(
        tiny_blip)
    inputs = processor(images=[image], text=[question], return_tensors="pt")
    likelihood = []
    for answer in ("yes", "no"):
        labels = processor.tokenizer([answer], return_tensors="pt")["input_ids"]
        labels[:, 0] = model.config.text_config.bos_token_id
        with torch.no_grad():
            loss = model(**inputs, labels=labels).loss
        likelihood.append(-float(loss) * (labels.shape[1] - 1))
    return 1.0 / (1.0 + math.exp(likelihood[1] - likelihood[0]))


def test_score_is_the_product_of_p_yes_over_phrases(tiny_blip):
    evaluator = T2ICompBench(T2ICompBench.Config(model=str(tiny_blip), prompts=PROMPTS, batch_size=4))
    pictures = images(3)
    rows = [EvalRow(p, i) for i, p in enumerate(PROMPTS)]
    scores = score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), pictures, rows)
    for picture, row, value, record in zip(pictures, rows, scores.per_image["vqa"], scores.records):
        expected = [p_yes_from_the_models_own_loss(tiny_blip, picture, f"{phrase}?")
                    for phrase in noun_phrases(row.prompt)]
        assert record["p_yes"] == pytest.approx(expected, abs=1e-4)
        assert value == pytest.approx(math.prod(expected), abs=1e-4)
        assert 0.0 < value < 1.0


def test_deterministic_and_batch_independent(tiny_blip):
    pictures, rows = images(3), [EvalRow(p, i) for i, p in enumerate(PROMPTS)]
    values = []
    for size in (1, 5, 5):
        evaluator = T2ICompBench(T2ICompBench.Config(model=str(tiny_blip), prompts=PROMPTS, batch_size=size))
        values.append(score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), pictures, rows)
                      .per_image["vqa"])
    assert values[1] == values[2]
    assert values[0] == pytest.approx(values[1], abs=1e-4)


# ------------------------------------------------------------------ the spatial part: the rule

SPATIAL_PROMPTS = ["a dog near a mouse", "a mouse on the left of a dog", "a dog on the top of a mouse",
                   "a mouse next to a dog", "a dog on side of a mouse", "a mouse on the right of a dog"]


def box(x: float, y: float, size: float = 10.0) -> tuple[float, float, float, float]:
    """A square box with its top-left corner at (x, y)."""
    return (x, y, x + size, y + size)


@pytest.mark.parametrize("line, expected", [
    ("a giraffe next to a lamp", ("giraffe", "next to", "lamp")),
    ("a mouse on side of a key", ("mouse", "on side of", "key")),
    ("a bee on the right of a refrigerator", ("bee", "on the right of", "refrigerator")),
    ("a girl on the top of a frog", ("girl", "on the top of", "frog")),
    ("a bicycle on the bottom of a girl", ("bicycle", "on the bottom of", "girl")),
    ("a sheep on the left of a lamp", ("sheep", "on the left of", "lamp")),
    ("a mouse near a bowl", ("mouse", "near", "bowl")),
    ("a bird on side of a airplane", ("bird", "on side of", "airplane")),  # the benchmark's own "a airplane"
    ("A Teddy Bear on the left of an  apple.", ("teddy bear", "on the left of", "apple")),
])
def test_spatial_prompts_parse(line, expected):
    parsed = parse_spatial(line, "line 1")
    assert (parsed.first, parsed.relation, parsed.second) == expected


@pytest.mark.parametrize("line, message", [
    ("a cat on top of a dog", "says 'on top of'"),
    ("a red car and a blue tree", "is not a T2I-CompBench spatial prompt"),
    ("on the left of a dog", "is not a T2I-CompBench spatial prompt"),
])
def test_other_prompts_are_refused_in_one_line(line, message):
    with pytest.raises(DataError, match=message) as caught:
        parse_spatial(line, "prompt 3")
    assert str(caught.value).startswith("prompt 3: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("relation, first, second, expected", [
    # left of: the second object's centre further right, more across than up/down, boxes apart
    ("on the left of", box(0, 0), box(50, 0), 1.0),
    ("on the left of", box(50, 0), box(0, 0), 0.0),          # the other way round
    ("on the left of", box(0, 0), box(20, 30), 0.0),         # more below than beside
    ("on the left of", box(0, 0), box(9, 0), 1.0),           # IoU 10/190 < 0.1
    ("on the left of", box(0, 0), box(4, 0), 0.1 / (60 / 140)),  # IoU 60/140 >= 0.1: 0.1 / IoU
    ("on the left of", box(0, 0), box(0, 0), 0.0),           # the same box: no offset
    ("on the right of", box(50, 0), box(0, 0), 1.0),
    ("on the right of", box(0, 0), box(50, 0), 0.0),
    ("on the right of", box(4, 0), box(0, 0), 0.1 / (60 / 140)),
    # on the top of: the second object lower in the image (y grows downwards)
    ("on the top of", box(0, 0), box(0, 50), 1.0),
    ("on the top of", box(0, 50), box(0, 0), 0.0),
    ("on the top of", box(0, 0), box(0, 4), 0.1 / (60 / 140)),
    ("on the top of", box(0, 0), box(30, 20), 0.0),          # more beside than below
    ("on the bottom of", box(0, 50), box(0, 0), 1.0),
    ("on the bottom of", box(0, 0), box(0, 50), 0.0),
    # near / next to / on side of: either distance under 150 pixels scores 1, else 150 / the larger distance
    ("near", box(0, 0), box(149, 1000), 1.0),
    ("next to", box(0, 0), box(1000, 149), 1.0),
    ("on side of", box(0, 0), box(200, 200), 0.75),
    ("near", box(0, 0), box(150, 300), 0.5),
    ("near", box(0, 0), box(0, 0), 1.0),
])
def test_position_score_of_each_relation(relation, first, second, expected):
    assert position_score(relation, first, second) == pytest.approx(expected)


def test_near_distance_is_measured_in_the_benchmarks_detector_frame():
    # UniDet saw images with their shorter side at 479 (longer at most 480): 200 px apart in a 958-px image
    # are 100 px there (near); in a 479-px image they are 200 (0.75).
    assert frame_scale(512, 512) == pytest.approx(479 / 512)
    assert frame_scale(768, 512) == pytest.approx(480 / 768)  # the longer side bounds it
    assert position_score("near", box(0, 0), box(200, 200), frame_scale(958, 958)) == 1.0
    assert position_score("near", box(0, 0), box(200, 200), frame_scale(479, 479)) == pytest.approx(0.75)


def detection(label: str, score: float, x: float, y: float = 0.0) -> Detection:
    return Detection(label, score, box(x, y))


def test_score_weighs_confidences_and_position_and_zeroes_below_a_half():
    prompt = parse_spatial("a cat on the left of a dog", "p")
    both = judge_spatial(prompt, [detection("cat", 0.9, 0), detection("dog", 0.8, 50)], (479, 479))
    assert both.score == pytest.approx(0.25 * 0.9 + 0.25 * 0.8 + 0.5 * 1.0)
    assert (both.confidences, both.position) == ([0.9, 0.8], 1.0)
    # Overlapping boxes: position 0.1 / IoU.
    overlapping = judge_spatial(prompt, [detection("cat", 0.9, 0), detection("dog", 0.8, 4)], (479, 479))
    assert overlapping.score == pytest.approx(0.25 * 1.7 + 0.5 * 0.1 / (60 / 140))
    # Both found, wrong side: 0.25 · (0.9 + 0.8) = 0.425 < 0.5, so 0; with full confidence exactly 0.5 stays.
    assert judge_spatial(prompt, [detection("cat", 0.9, 50), detection("dog", 0.8, 0)], (479, 479)).score == 0.0
    assert judge_spatial(prompt, [detection("cat", 1.0, 50), detection("dog", 1.0, 0)], (479, 479)).score == 0.5


def test_a_missing_object_scores_zero():
    prompt = parse_spatial("a cat on the left of a dog", "p")
    one = judge_spatial(prompt, [detection("cat", 1.0, 0), detection("car", 1.0, 50)], (479, 479))
    assert (one.score, one.confidences, one.position) == (0.0, [1.0, None], None)  # 0.25 · 1.0 < 0.5
    assert judge_spatial(prompt, [], (479, 479)).score == 0.0


def test_each_object_is_its_most_confident_detection_above_a_half():
    prompt = parse_spatial("a cat on the left of a dog", "p")
    # The dog at x=50 (right of the cat) is the most confident one; a less confident dog on the left is ignored.
    found = [detection("dog", 0.7, 0), detection("cat", 0.9, 20), detection("dog", 0.95, 50)]
    verdict = judge_spatial(prompt, found, (479, 479))
    assert verdict.confidences == [0.9, 0.95] and verdict.position == 1.0
    # A detection needs a confidence above 0.5 (UniDet's threshold), not equal to it.
    assert judge_spatial(prompt, [detection("cat", 0.5, 0), detection("dog", 1.0, 50)], (479, 479)).confidences \
        == [None, 1.0]


def test_person_words_and_aliases_name_detector_classes():
    verdict = judge_spatial(parse_spatial("a woman near a sofa", "p"),
                            [detection("person", 0.9, 0), detection("couch", 0.9, 30)], (479, 479), {"sofa": "couch"})
    assert verdict.position == 1.0 and verdict.score == pytest.approx(0.95)
    assert parse_spatial("a boy near a sofa", "p").classes({"boy": "child"}) == ("child", "sofa")


# ------------------------------------------------------------------ the spatial part: the evaluator

@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return build_mask2former(tmp_path_factory.mktemp("tiny-mask2former"))


def spatial_evaluator(tiny_detector, **settings) -> T2ICompBench:
    settings = {"part": "spatial", "detector": str(tiny_detector), "detector_size": (64, 128),
                "prompts": SPATIAL_PROMPTS, "aliases": {"mouse": "computer mouse"}, "images_per_prompt": 2,
                "batch_size": 5, "prefix": "compbench_spatial", **settings}
    return T2ICompBench(T2ICompBench.Config(**settings))


def spatial_scores(evaluator, pictures):
    rows = evaluator.eval_rows()
    return score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), pictures, rows), rows


def test_spatial_evaluator_is_finite_deterministic_and_batch_independent(tiny_detector):
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")) for _ in range(12)]
    batched, rows = spatial_scores(spatial_evaluator(tiny_detector), pictures)
    again, _ = spatial_scores(spatial_evaluator(tiny_detector), pictures)
    alone, _ = spatial_scores(spatial_evaluator(tiny_detector, batch_size=1), pictures)
    values = batched.per_image["spatial"]
    assert len(values) == len(rows) == 12
    assert values == again.per_image["spatial"]
    assert values == pytest.approx(alone.per_image["spatial"], abs=1e-5)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    # Each value is the rule applied to what the records say the detector found.
    for value, record, row in zip(values, batched.records, rows):
        assert record["objects"] == list(row.data.classes({"mouse": "computer mouse"}))
        first, second = record["confidences"]
        if record["position"] is not None:
            expected = 0.25 * (first + second) + 0.5 * record["position"]
            assert value == pytest.approx(expected if expected >= 0.5 else 0.0)
        else:
            assert value == 0.0
    assert min(values) == 0.0 < max(values), "the tiny detector should find both objects in some images"
    assert summarise("compbench_spatial", batched, rows)["compbench_spatial/spatial"] == pytest.approx(
        sum(values) / len(values))  # the benchmark's mean over images


def test_unknown_objects_are_refused_in_one_line_or_skipped(tiny_detector):
    prompts = ["a dog near a frog", *SPATIAL_PROMPTS]
    with pytest.raises(DataError, match="no class 'frog'") as caught:
        spatial_evaluator(tiny_detector, prompts=prompts).eval_rows()
    assert "\n" not in str(caught.value)
    rows = spatial_evaluator(tiny_detector, prompts=prompts, unknown_objects="skip").eval_rows()
    assert [row.prompt for row in rows[::2]] == SPATIAL_PROMPTS
    with pytest.raises(DataError, match="no spatial prompt whose objects"):
        spatial_evaluator(tiny_detector, prompts=["a dog near a frog"], unknown_objects="skip").eval_rows()


def test_alias_keys_match_whatever_their_case(tiny_detector):
    """Prompt objects are parsed lowercased; an alias written "Frog" must still map "a frog"."""
    evaluator = spatial_evaluator(tiny_detector, prompts=["a dog near a Frog"], aliases={"Frog": "cat"})
    assert evaluator.config.aliases == {"frog": "cat"}
    assert evaluator.eval_rows()[0].data.classes(evaluator.config.aliases) == ("dog", "cat")


def test_spatial_prompts_are_read_once_for_check_and_scoring(tiny_detector, monkeypatch):
    evaluator = spatial_evaluator(tiny_detector)
    reads = []
    labels = evaluator.detector_labels
    monkeypatch.setattr(evaluator, "detector_labels", lambda: reads.append(1) or labels())
    evaluator.check()
    assert evaluator.eval_rows() == evaluator.eval_rows() and len(reads) == 1


def test_a_damaged_detector_config_or_label_file_is_one_line(tiny_detector, tmp_path):
    import shutil

    broken = tmp_path / "detector"
    shutil.copytree(tiny_detector, broken)
    for damaged in ("[1, 2]", '{"model_type": "nonsense"}'):
        (broken / "config.json").write_text(damaged)
        with pytest.raises(DataError, match="cannot read the spatial detector's config") as caught:
            spatial_evaluator(broken).eval_rows()
        assert "\n" not in str(caught.value)
    names = tmp_path / "object_names.txt"
    names.write_bytes("chien\n".encode("utf-16"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        spatial_evaluator(tiny_detector, object_names=str(names)).eval_rows()
    with pytest.raises(DataError, match="cannot read"):
        spatial_evaluator(tiny_detector, object_names=str(tmp_path)).eval_rows()  # a directory


def test_spatial_evaluate_writes_metrics_and_results(tiny_detector, tiny_sd, tmp_path):
    from tiny_models import load_backbone

    from prefopt_backbones.sd import SDBackbone

    backbone = load_backbone(SDBackbone, tiny_sd, mode="lora")
    evaluator = spatial_evaluator(tiny_detector, num_inference_steps=2, prompts=SPATIAL_PROMPTS[:2])
    metrics = evaluator.evaluate(backbone, str(tmp_path), seed=0)
    assert {"compbench_spatial/spatial", "compbench_spatial/reference/spatial",
            "compbench_spatial/spatial/win_rate"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    records = [json.loads(line) for line in (tmp_path / "compbench_spatial_results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 4 and {r["relation"] for r in records} == {"near", "on the left of"}


# ------------------------------------------------------------------ a detector of its own, plugged in

class SquareDetector:
    """Scenes of solid squares on white: red squares are cats, green ones dogs."""

    PALETTE = {(255, 0, 0): "cat", (0, 160, 0): "dog"}

    def detect(self, images):
        found = []
        for image in images:
            pixels = np.asarray(image)
            found.append([])
            for rgb, label in self.PALETTE.items():
                ys, xs = np.nonzero((pixels == np.array(rgb)).all(axis=-1))
                if len(xs):
                    found[-1].append(Detection(label, 0.95, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
        return found


class SquareCompBench(T2ICompBench):
    """T2I-CompBench's spatial part with another detector plugged in, as a benchmark of its own would."""

    name = "square_compbench"

    def detector_labels(self):
        return list(SquareDetector.PALETTE.values())

    def load_scorer(self, device):
        return SquareDetector()


def square_scene(cat: tuple[int, int] | None, dog: tuple[int, int] | None) -> Image.Image:
    """A 100×100 white canvas with a 10×10 red cat and a green dog at the given top-left corners."""
    canvas = np.full((100, 100, 3), 255, dtype=np.uint8)
    for rgb, where in (((255, 0, 0), cat), ((0, 160, 0), dog)):
        if where is not None:
            canvas[where[1]:where[1] + 10, where[0]:where[0] + 10] = rgb
    return Image.fromarray(canvas)


def test_a_plugged_in_detector_scores_scenes_of_their_prompt_above_others():
    prompts = ["a cat on the left of a dog", "a cat on the top of a dog", "a cat near a dog"]
    evaluator = SquareCompBench(T2ICompBench.Config(part="spatial", prompts=prompts))
    rows = evaluator.eval_rows()
    right = [square_scene((10, 45), (80, 45)), square_scene((45, 10), (45, 80)), square_scene((10, 10), (30, 30))]
    # Each drawn for another prompt: the cat right of the dog, below it, and the dog missing.
    wrong = [square_scene((80, 45), (10, 45)), square_scene((45, 80), (45, 10)), square_scene((10, 10), None)]
    good = score_images(evaluator, evaluator.load_scorer(None), right, rows).per_image["spatial"]
    bad = score_images(evaluator, evaluator.load_scorer(None), wrong, rows).per_image["spatial"]
    assert good == pytest.approx([0.25 * 0.95 * 2 + 0.5] * 3)
    assert bad == [0.0, 0.0, 0.0]


def test_a_misspelt_part_is_one_line(tmp_path):
    from helpers import cli, error_lines

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("backbone: {name: toy2d}\nobjective: {name: ddspo}\npairs: {source: {name: toy2d_neighbours}}\n"
                      "eval: [{name: t2i_compbench, part: spacial, prompts: [a cat near a dog]}]\n")
    code, err = cli("validate", recipe)
    assert code == 2 and len(error_lines(err)) == 1 and "part" in error_lines(err)[0], err
