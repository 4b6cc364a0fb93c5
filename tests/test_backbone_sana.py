"""The ``sana`` backbone on a tiny random SANA pipeline (CPU, offline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import (
    PROMPTS,
    SANA_RESOLUTION,
    check_reference_is_frozen,
    check_training_step,
    load_backbone,
    objective,
    train_steps,
)

from prefopt_backbones.sana import SanaBackbone

OBJECTIVES = ["ddspo", "diffusion_dpo", "diffusion_kto"]
LATENT = (4, SANA_RESOLUTION // 2, SANA_RESOLUTION // 2)


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_step(tiny_sana, objective_name, mode):
    check_training_step(load_backbone(SanaBackbone, tiny_sana, mode), objective_name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reference_prediction_is_frozen(tiny_sana, mode):
    check_reference_is_frozen(load_backbone(SanaBackbone, tiny_sana, mode))


# ---------------------------------------------------------------------------- flow matching


def test_forward_process_is_rectified_flow(tiny_sana):
    backbone = load_backbone(SanaBackbone, tiny_sana)
    x0, noise = torch.randn(3, *LATENT), torch.randn(3, *LATENT)
    t = torch.tensor([1.0, 500.0, 1000.0])
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(backbone.add_noise(x0, noise, t), (1 - sigma) * x0 + sigma * noise)
    assert torch.equal(backbone.regression_target(x0, noise, t), noise - x0)
    assert torch.allclose(backbone.t_fraction(t), torch.tensor([0.001, 0.5, 1.0]))
    assert torch.equal(backbone.loss_weight(t), torch.ones(3))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timesteps_are_the_flow_schedule_indexed_as_diffusers_scripts_do(tiny_sana, shift):
    """t = scheduler.timesteps[⌊u·T⌋] of FlowMatchEulerDiscreteScheduler(shift) (unshifted: σ = t/1000)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    backbone = load_backbone(SanaBackbone, tiny_sana, shift=shift)
    t = backbone.sample_timesteps(64, torch.Generator().manual_seed(0))
    u = torch.rand(64, generator=torch.Generator().manual_seed(0))
    schedule = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).timesteps
    assert t.dtype == torch.float32
    assert torch.allclose(t, schedule[(u * 1000).long()], atol=1e-3)
    if shift == 1.0:
        assert torch.equal(t, t.round())  # the unshifted schedule is whole steps 1..1000


@pytest.mark.parametrize("density", ["logit_normal", "mode"])
def test_timestep_densities_use_the_engine_generator(tiny_sana, density):
    backbone = load_backbone(SanaBackbone, tiny_sana, timestep_density=density, logit_mean=0.5)
    first = backbone.sample_timesteps(256, torch.Generator().manual_seed(1))
    assert torch.equal(first, backbone.sample_timesteps(256, torch.Generator().manual_seed(1)))
    assert 0 < float(first.min()) and float(first.max()) <= 1000


@pytest.mark.parametrize("weighting", ["sigma_sqrt", "cosmap"])
def test_loss_weighting_is_diffusers_sd3_weighting(tiny_sana, weighting):
    backbone = load_backbone(SanaBackbone, tiny_sana, loss_weighting=weighting)
    t = torch.tensor([100.0, 500.0, 900.0])
    sigma = t / 1000
    expected = sigma**-2 if weighting == "sigma_sqrt" else 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    assert torch.allclose(backbone.loss_weight(t), expected)


def test_weighted_training_step(tiny_sana):
    check_training_step(load_backbone(SanaBackbone, tiny_sana, loss_weighting="cosmap", shift=3.0), "diffusion_dpo")


# ---------------------------------------------------------------------------- prompts, data, sampling


def test_prompts_are_gemma_states_with_a_mask(tiny_sana):
    backbone = load_backbone(SanaBackbone, tiny_sana)
    cond = backbone.encode_prompts(PROMPTS)
    assert cond["encoder_hidden_states"].shape == (3, 300, 8)
    assert cond["encoder_attention_mask"].shape == (3, 300)
    assert cond["encoder_attention_mask"].dtype == torch.long
    short = load_backbone(SanaBackbone, tiny_sana, max_sequence_length=64).encode_prompts(PROMPTS)
    assert short["encoder_hidden_states"].shape == (3, 64, 8)


def test_complex_human_instruction_is_off_unless_asked(tiny_sana):
    plain = load_backbone(SanaBackbone, tiny_sana).encode_prompts(PROMPTS[:1])
    instructed = load_backbone(SanaBackbone, tiny_sana, complex_human_instruction=True).encode_prompts(PROMPTS[:1])
    assert instructed["encoder_hidden_states"].shape == plain["encoder_hidden_states"].shape
    assert not torch.allclose(instructed["encoder_hidden_states"], plain["encoder_hidden_states"])


def test_identity_and_data_round_trip(tiny_sana):
    backbone = load_backbone(SanaBackbone, tiny_sana)
    assert backbone.identity() == {
        "family": "sana", "data_space": "latent", "data_shape": list(LATENT), "latent_scaling_factor": 0.41407,
    }
    latents = backbone.sample(PROMPTS[:2], [0, 1])
    assert latents.shape == (2, *LATENT)
    images = backbone.decode(latents)
    assert images[0].size == (SANA_RESOLUTION, SANA_RESOLUTION)
    assert backbone.encode_data(images).shape == (2, *LATENT)


def test_sample_matches_the_diffusers_pipeline(tiny_sana):
    from diffusers import SanaPipeline

    backbone = load_backbone(SanaBackbone, tiny_sana, train=False)
    pipeline = SanaPipeline.from_pretrained(tiny_sana)
    expected = pipeline(
        PROMPTS[:2], num_inference_steps=2, guidance_scale=7.5, height=SANA_RESOLUTION, width=SANA_RESOLUTION,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent",
        use_resolution_binning=False, complex_human_instruction=None,
    ).images
    assert torch.allclose(backbone.sample(PROMPTS[:2], [3, 4]), expected, atol=1e-5)


# ---------------------------------------------------------------------------- saving


def _generate(pipeline) -> np.ndarray:
    return pipeline("a red car", num_inference_steps=2, height=SANA_RESOLUTION, width=SANA_RESOLUTION,
                    use_resolution_binning=False, output_type="np").images


def _assert_pipeline_transformer_is_student(transformer, backbone):
    x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100.0, 700.0])
    cond = backbone.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        expected = backbone.predict(x, t, cond, "student")
        got = transformer(
            x, encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"], timestep=t,
        ).sample
    assert not torch.allclose(expected, backbone.predict(x, t, cond, "reference"))
    assert torch.allclose(got, expected, atol=1e-5)


def test_lora_save_loads_into_the_pipeline(tiny_sana, tmp_path):
    from diffusers import SanaPipeline

    settings = {"rank": 4, "alpha": 8, "target_modules": ["to_k", "to_q", "to_v"]}
    backbone = load_backbone(SanaBackbone, tiny_sana, "lora", finetune=settings)
    train_steps(backbone, objective("ddspo"), 2)
    backbone.save(str(tmp_path / "final"))
    pipeline = SanaPipeline.from_pretrained(tiny_sana)
    pipeline.load_lora_weights(tmp_path / "final")
    _assert_pipeline_transformer_is_student(pipeline.transformer, backbone)
    assert np.isfinite(_generate(pipeline)).all()

    fresh = load_backbone(SanaBackbone, tiny_sana, "lora")  # default rank and targets: the saved ones win
    fresh.load_trained(str(tmp_path / "final"))
    _assert_pipeline_transformer_is_student(pipeline.transformer, fresh)


def test_full_save_is_a_pipeline(tiny_sana, tmp_path):
    from diffusers import SanaPipeline

    backbone = load_backbone(SanaBackbone, tiny_sana, "full")
    train_steps(backbone, objective("diffusion_dpo"), 1)
    backbone.save(str(tmp_path / "final"))
    pipeline = SanaPipeline.from_pretrained(tmp_path / "final")
    _assert_pipeline_transformer_is_student(pipeline.transformer, backbone)
    assert _generate(pipeline).shape == (1, SANA_RESOLUTION, SANA_RESOLUTION, 3)


def test_describe():
    described = SanaBackbone(SanaBackbone.Config(finetune={"rank": 128})).describe()
    assert described["components"]["transformer"] == (
        "SanaTransformer2DModel from Efficient-Large-Model/Sana_600M_1024px_diffusers/transformer"
    )
    assert described["trained"]["rank"] == 128
    assert described["forward_process"]["shift"] == 1.0
