"""``t2i_compbench`` (BLIP-VQA attribute binding) on a tiny random BlipForQuestionAnswering saved to disk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_eval_models import build_blip_vqa
from transformers import BlipForQuestionAnswering, BlipProcessor

from prefopt.evaluation import EvalRow, score_images
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
