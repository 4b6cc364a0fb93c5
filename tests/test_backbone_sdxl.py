"""The ``sdxl`` backbone on a tiny random SDXL pipeline (CPU, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    PROMPTS,
    SD_RESOLUTION,
    check_reference_is_frozen,
    check_training_step,
    load_backbone,
    objective,
    train_steps,
)

from prefopt.interfaces import Runtime
from prefopt_backbones.sdxl import SDXLBackbone

OBJECTIVES = ["ddspo", "diffusion_dpo", "diffusion_kto"]


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_step(tiny_sdxl, objective_name, mode):
    check_training_step(load_backbone(SDXLBackbone, tiny_sdxl, mode), objective_name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reference_prediction_is_frozen(tiny_sdxl, mode):
    check_reference_is_frozen(load_backbone(SDXLBackbone, tiny_sdxl, mode))


def test_condition_is_embeddings_pooled_and_time_ids(tiny_sdxl):
    backbone = load_backbone(SDXLBackbone, tiny_sdxl)
    cond = backbone.encode_prompts(PROMPTS)
    assert cond["encoder_hidden_states"].shape == (3, 16, 32)  # both encoders' penultimate states
    assert cond["text_embeds"].shape == (3, 8)  # text_encoder_2's pooled projection
    # The same micro-conditioning the pipeline uses when it samples at this size.
    pipeline = backbone._text_pipeline
    size = (SD_RESOLUTION, SD_RESOLUTION)
    expected = pipeline._get_add_time_ids(
        size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=8
    ).repeat(3, 1)
    assert torch.equal(cond["time_ids"], expected)
    assert cond["time_ids"][0].tolist() == [16, 16, 0, 0, 16, 16]


def test_identity(tiny_sdxl):
    backbone = SDXLBackbone(SDXLBackbone.Config(pretrained=str(tiny_sdxl)))
    assert backbone.data_signature() == {
        "family": "sdxl", "data_space": "latent", "data_shape": [4, 8, 8], "latent_scaling_factor": 0.18215,
    }


def test_vae_stays_float32_under_half_precision(tiny_sdxl):
    backbone = SDXLBackbone(SDXLBackbone.Config(pretrained=str(tiny_sdxl), num_inference_steps=2))
    backbone.load(Runtime(device=torch.device("cpu"), dtype=torch.bfloat16))
    assert backbone.modules["vae"].dtype == torch.float32
    assert backbone.modules["text_encoder_2"].dtype == torch.bfloat16
    unet = backbone.trainable_module()
    assert {p.dtype for n, p in unet.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for p in backbone.trainable_parameters()} == {torch.float32}
    images = backbone.decode(torch.zeros(1, 4, 8, 8))
    assert images[0].size == (SD_RESOLUTION, SD_RESOLUTION)


def test_sample_matches_the_diffusers_pipeline(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    backbone = load_backbone(SDXLBackbone, tiny_sdxl, train=False)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, add_watermarker=False)
    expected = pipeline(
        PROMPTS[:2], num_inference_steps=2, guidance_scale=7.5, height=SD_RESOLUTION, width=SD_RESOLUTION,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent",
    ).images
    assert torch.allclose(backbone.sample(PROMPTS[:2], [3, 4]), expected, atol=1e-5)


def _generate(pipeline) -> np.ndarray:
    return pipeline("a red car", num_inference_steps=2, height=SD_RESOLUTION, width=SD_RESOLUTION,
                    output_type="np").images


def _assert_pipeline_unet_is_student(unet, backbone):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    cond = backbone.encode_prompts(PROMPTS[:2])
    added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    with torch.no_grad():
        expected = backbone.predict(x, t, cond, "student")
        got = unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample
    assert not torch.allclose(expected, backbone.predict(x, t, cond, "reference"))
    assert torch.allclose(got, expected, atol=1e-5)


def test_lora_save_loads_into_the_pipeline(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    backbone = load_backbone(SDXLBackbone, tiny_sdxl, "lora", finetune={"rank": 4, "alpha": 2})
    train_steps(backbone, objective("ddspo"), 2)
    backbone.save(str(tmp_path / "final"))
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, add_watermarker=False)
    pipeline.load_lora_weights(tmp_path / "final")
    _assert_pipeline_unet_is_student(pipeline.unet, backbone)
    assert np.isfinite(_generate(pipeline)).all()


def test_full_save_is_a_pipeline(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    backbone = load_backbone(SDXLBackbone, tiny_sdxl, "full")
    train_steps(backbone, objective("diffusion_kto"), 1)
    backbone.save(str(tmp_path / "final"))
    pipeline = StableDiffusionXLPipeline.from_pretrained(tmp_path / "final", add_watermarker=False)
    _assert_pipeline_unet_is_student(pipeline.unet, backbone)
    assert _generate(pipeline).shape == (1, SD_RESOLUTION, SD_RESOLUTION, 3)

    fresh = load_backbone(SDXLBackbone, tiny_sdxl, "full")
    fresh.load_trained(str(tmp_path / "final"))
    _assert_pipeline_unet_is_student(pipeline.unet, fresh)


def test_describe_names_both_encoders():
    described = SDXLBackbone(SDXLBackbone.Config()).describe()
    assert described["pretrained"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert set(described["components"]) == {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "unet"}
    assert described["dtypes"]["vae"] == "float32"
