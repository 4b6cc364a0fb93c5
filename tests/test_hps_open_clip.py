"""HPS v2's open_clip checkpoint read into transformers' CLIP, checked against the real open_clip's outputs.

tests/data/hps_tiny/ holds a small random open_clip ViT CLIP saved as HPS v2
ships its checkpoints (``{"state_dict": ...}``, half precision), and what
open_clip 3.3.0 computed from it (tests/data/hps_tiny/make.py, run where
open_clip and torchvision install): its tokens, its preprocessed pixels, its
unit embeddings and HPS's scores. Here the same checkpoint goes through
prefopt's ``hpsv2`` evaluator (``open_clip_to_transformers`` into a
transformers ``CLIPModel`` of the same shapes, built from a config as the
laion ViT-H/14 hub model is), and must give open_clip's numbers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from prefopt.evaluation import EvalRow, score_images
from prefopt_evaluators.preference_scores import HPSv2

DATA = Path(__file__).parent / "data" / "hps_tiny"
# The shapes, prompts and images that make.py used, read from beside the data (not an importable package).
_loader = importlib.util.spec_from_file_location("hps_tiny_spec", DATA / "spec.py")
spec = importlib.util.module_from_spec(_loader)
_loader.loader.exec_module(spec)

CHECKPOINT = DATA / "HPS_tiny_compressed.pt"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "golden.safetensors"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A transformers CLIP directory of the tiny HPS model's shapes (random weights; the checkpoint replaces them)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = tmp_path_factory.mktemp("tiny-hps-clip")
    tokenizer = CLIPTokenizer(str(DATA / "vocab.json"), str(DATA / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=spec.CONTEXT_LENGTH)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=spec.TEXT_WIDTH, intermediate_size=4 * spec.TEXT_WIDTH,
                         num_hidden_layers=spec.TEXT_LAYERS, num_attention_heads=spec.TEXT_WIDTH // 16,
                         max_position_embeddings=spec.CONTEXT_LENGTH, hidden_act="gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=spec.IMAGE_SIZE, patch_size=spec.VISION_PATCH, hidden_size=spec.VISION_WIDTH,
                           intermediate_size=4 * spec.VISION_WIDTH, num_hidden_layers=spec.VISION_LAYERS,
                           num_attention_heads=spec.VISION_WIDTH // spec.VISION_HEAD_WIDTH, hidden_act="gelu"),
        projection_dim=spec.EMBED_DIM,
    ))
    model.save_pretrained(directory)
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessing: shorter side to the input size (bicubic),
    # centre crop, OpenAI's mean and std.
    image_processor = CLIPImageProcessor(size={"shortest_edge": spec.IMAGE_SIZE}, resample=3,
                                         crop_size={"height": spec.IMAGE_SIZE, "width": spec.IMAGE_SIZE},
                                         image_mean=list(spec.MEAN), image_std=list(spec.STD))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def scorer(clip_dir):
    evaluator = HPSv2(HPSv2.Config(model=str(clip_dir), checkpoint=str(CHECKPOINT), prompts=spec.PROMPTS))
    return evaluator, evaluator.load_scorer(torch.device("cpu"))


def test_mapped_weights_give_open_clips_embeddings(scorer, golden):
    _, clip = scorer
    with torch.no_grad():
        for transform in ("open_clip", "hps"):
            out = clip.model.get_image_features(pixel_values=golden[f"pixels_{transform}"])
            image = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
            torch.testing.assert_close(image, golden[f"image_features_{transform}"], atol=2e-5, rtol=1e-4)
        # open_clip's token rows: start, words, end, zeros to 77; no padding mask (its text tower is causal,
        # and it pools at the end token).
        out = clip.model.get_text_features(input_ids=golden["tokens"])
        text = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    torch.testing.assert_close(text, golden["text_features"], atol=2e-5, rtol=1e-4)


def test_transformers_tokenizer_gives_open_clips_tokens(scorer, golden):
    _, clip = scorer
    ids = clip.processor(text=spec.PROMPTS, padding=True, return_tensors="pt")
    for row, mask, expected in zip(ids["input_ids"], ids["attention_mask"], golden["tokens"]):
        assert row[mask.bool()].tolist() == expected[expected != 0].tolist()


def test_hpsv2_scores_match_open_clip_and_hps_v2_from_images_and_prompts(scorer, golden):
    """The evaluator's scores, from PIL images and prompt strings, against open_clip's and HPS v2's pipelines.

    The three differ only in how they resize. transformers' PIL image
    processor (used without torchvision, as in CI) gives open_clip's eval
    pixels exactly (scores within 1e-7); its torchvision processor (used when
    torchvision is installed) resizes the 8-bit tensor: pixels within 0.015
    (normalised units), scores within 4e-5. HPS v2's own eval transform
    resizes the float tensor (ToTensor first): pixels within 0.019, scores
    within 3.2e-4 of either.
    """
    evaluator, clip = scorer
    pictures = spec.images()
    pixels = clip.processor(images=pictures, return_tensors="pt")["pixel_values"]
    assert (pixels - golden["pixels_open_clip"]).abs().max() < 0.02
    rows = [EvalRow(prompt, i) for prompt in spec.PROMPTS for i in range(len(pictures))]
    repeated = [pictures[i] for _ in spec.PROMPTS for i in range(len(pictures))]
    for batch_size in (1, 4):
        batched = HPSv2(evaluator.config.model_copy(update={"batch_size": batch_size}))
        scores = score_images(batched, clip, repeated, rows).per_image["score"]
        # golden scores are [image][prompt]; the rows run over prompts, then images.
        assert scores == pytest.approx(golden["scores_open_clip"].T.reshape(-1).tolist(), abs=1e-4)
        assert scores == pytest.approx(golden["scores_hps"].T.reshape(-1).tolist(), abs=1e-3)
    # Given open_clip's pixels, exactly open_clip's scores.
    with torch.no_grad():
        out = clip.model.get_image_features(pixel_values=golden["pixels_open_clip"])
    image = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    text = clip.text_features(spec.PROMPTS)
    torch.testing.assert_close(image @ text.T, golden["scores_open_clip"], atol=2e-5, rtol=1e-4)
