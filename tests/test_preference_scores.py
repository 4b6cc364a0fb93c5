"""``hpsv2`` and ``aesthetic`` evaluators on the tiny random CLIP, their heads and checkpoints built here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from prefopt.errors import DataError
from prefopt.evaluation import EvalRow, score_images
from prefopt_evaluators.preference_scores import Aesthetic, HPSv2

PROMPTS = ["a photo of a cat", "a red car", "a dog under a tree"]


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")) for _ in range(n)]


def rows(n: int) -> list[EvalRow]:
    return [EvalRow(PROMPTS[i % len(PROMPTS)], i) for i in range(n)]


def as_open_clip(model: CLIPModel) -> dict[str, torch.Tensor]:
    """A transformers CLIP's weights in open_clip's layout (packed q/k/v, (width, embed) projections)."""
    sd = model.state_dict()
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T,
        "logit_scale": sd["logit_scale"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T,
        "attn_mask": torch.full((16, 16), float("-inf")).triu(1),
    }
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        layers = getattr(model, tower).encoder.layers
        for i in range(len(layers)):
            ours, theirs = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{ours}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
                for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                    out[f"{theirs}{a}.{kind}"] = sd[f"{ours}{b}.{kind}"]
    return {k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def hps_checkpoint(tiny_clip, tmp_path_factory):
    """An open_clip-layout checkpoint of a CLIP that differs from the tiny one, and that CLIP."""
    tuned = CLIPModel.from_pretrained(tiny_clip)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    path = tmp_path_factory.mktemp("hps") / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in as_open_clip(tuned).items()}}, path)
    return path, tuned.eval()


def hps(tiny_clip, **settings) -> HPSv2:
    return HPSv2(HPSv2.Config(model=str(tiny_clip), prompts=PROMPTS, **settings))


def test_hpsv2_reads_an_open_clip_checkpoint_into_transformers_clip(tiny_clip, hps_checkpoint):
    path, tuned = hps_checkpoint
    evaluator = hps(tiny_clip, checkpoint=str(path), batch_size=2)
    pictures, table = images(5), rows(5)
    scores = score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), pictures, table)
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    expected = []
    with torch.no_grad():
        for picture, row in zip(pictures, table):
            out = tuned(**processor(text=[row.prompt], images=[picture], return_tensors="pt", padding=True))
            expected.append(float(out.logits_per_image[0, 0] / tuned.logit_scale.exp()))
    assert scores.per_image["score"] == pytest.approx(expected, abs=1e-5)
    # Without the checkpoint the tiny CLIP's own weights score: other numbers.
    plain = hps(tiny_clip)
    untuned = score_images(plain, plain.load_scorer(torch.device("cpu")), pictures, table).per_image["score"]
    assert all(abs(a - b) > 1e-6 for a, b in zip(untuned, expected))


def test_hpsv2_batched_equals_unbatched_and_repeats(tiny_clip, hps_checkpoint):
    path, _ = hps_checkpoint
    results = []
    for size in (1, 3, 3):
        evaluator = hps(tiny_clip, checkpoint=str(path), batch_size=size)
        results.append(score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), images(5), rows(5)))
    values = [r.per_image["score"] for r in results]
    assert all(math.isfinite(v) for v in values[0])
    assert values[1] == values[2]
    assert values[0] == pytest.approx(values[1], abs=1e-6)


def test_hpsv2_refuses_a_checkpoint_of_another_model(tiny_clip, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(DataError, match="does not fit"):
        hps(tiny_clip, checkpoint=str(path)).load_scorer(torch.device("cpu"))


def unit_image_embedding(tiny_clip, image) -> torch.Tensor:
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        out = model.get_image_features(**processor(images=[image], return_tensors="pt"))
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(features, dim=-1)[0]


def test_aesthetic_mlp_head_orders_a_constructed_case(tiny_clip, tmp_path):
    pictures = images(4)
    target = unit_image_embedding(tiny_clip, pictures[0])
    dim = target.shape[0]
    # The improved predictor's layout (Linear, Dropout, ...): identity maps after a first layer that
    # projects onto the first picture's embedding, so a picture scores its cosine with that one.
    head = {"layers.0.weight": target[None, :].repeat(4, 1) / 4, "layers.0.bias": torch.zeros(4),
            "layers.2.weight": torch.ones(2, 4), "layers.2.bias": torch.zeros(2),
            "layers.4.weight": torch.ones(1, 2) / 2, "layers.4.bias": torch.tensor([5.0])}
    path = tmp_path / "head.pth"
    torch.save(head, path)
    evaluator = Aesthetic(Aesthetic.Config(model=str(tiny_clip), head=str(path), prompts=PROMPTS, batch_size=3))
    values = score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), pictures, rows(4)).per_image["score"]
    expected = [5.0 + float(unit_image_embedding(tiny_clip, p) @ target) for p in pictures]
    assert values == pytest.approx(expected, abs=1e-5)
    assert values[0] == pytest.approx(6.0, abs=1e-5) and values[0] == max(values)
    assert dim == 8


def test_aesthetic_linear_head_and_mismatched_width(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "linear.safetensors"
    save_file({"weight": torch.ones(1, 8), "bias": torch.zeros(1)}, str(path))
    config = Aesthetic.Config(model=str(tiny_clip), head=str(path), prompts=PROMPTS)
    one_by_one = Aesthetic(config.model_copy(update={"batch_size": 1}))
    values = [score_images(e, e.load_scorer(torch.device("cpu")), images(3), rows(3)).per_image["score"]
              for e in (Aesthetic(config), one_by_one)]
    assert values[0] == pytest.approx(values[1], abs=1e-6) and all(math.isfinite(v) for v in values[0])
    save_file({"weight": torch.ones(1, 768), "bias": torch.zeros(1)}, str(path))
    with pytest.raises(DataError, match="768-d"):
        Aesthetic(config).load_scorer(torch.device("cpu"))
