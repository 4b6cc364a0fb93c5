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
    pair_batch,
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


@pytest.mark.parametrize(
    "settings",
    [{}, {"shift": 3.0, "timestep_density": "logit_normal", "loss_weighting": "cosmap"}],
    ids=["default", "shift3-logit_normal-cosmap"],
)
def test_step_is_bitwise_the_flow_matching_reference(tiny_sana, settings):
    """The step on the flow-matching base equals, bit for bit, the SANA step before the move.

    The reference below is the pre-move computation written out with diffusers'
    own pieces: u from compute_density_for_timestep_sampling, t from the
    FlowMatchEulerDiscreteScheduler(shift) table at ⌊u·T⌋, x_t = (1−σ)x0 + σ·noise,
    target noise − x0, the transformer called at t·timestep_scale (adapters off
    for the reference), weights from compute_loss_weighting_for_sd3.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    from prefopt.engine.step import FusedStep
    from prefopt.interfaces import ObjectiveInputs
    from prefopt_backbones import lora

    backbone = load_backbone(SanaBackbone, tiny_sana, complex_human_instruction=False, **settings)
    transformer = backbone.trainable_module()
    backbone.set_trainable_module(transformer)
    torch.manual_seed(1)
    with torch.no_grad():  # a student that differs from the reference, so every gradient is non-zero
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    dpo = objective("diffusion_dpo")
    batch = pair_batch(backbone, seed=3)
    n = len(batch)

    fused = FusedStep(backbone, dpo)
    loss = fused(batch, torch.Generator().manual_seed(5), torch.device("cpu")).loss
    grads = torch.autograd.grad(loss, [p for p in transformer.parameters() if p.requires_grad])

    generator = torch.Generator().manual_seed(5)
    u = compute_density_for_timestep_sampling(
        weighting_scheme=settings.get("timestep_density", "uniform"), batch_size=n, logit_mean=0.0, logit_std=1.0,
        mode_scale=1.29, device="cpu", generator=generator,
    )
    t = FlowMatchEulerDiscreteScheduler(shift=settings.get("shift", 1.0)).timesteps[(u * 1000).long()]
    noise = torch.randn(batch.x0_w.shape, generator=generator)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    x_t = {side: (1 - sigma) * x0 + sigma * noise for side, x0 in (("w", batch.x0_w), ("l", batch.x0_l))}
    embeds, mask, _, _ = SanaPipeline.from_pretrained(tiny_sana, transformer=None, vae=None).encode_prompt(
        batch.prompts, do_classifier_free_guidance=False, max_sequence_length=300, complex_human_instruction=None
    )

    def call(wanted):
        return transformer(
            torch.cat([x_t[p.latent] for p in wanted]), encoder_hidden_states=embeds.repeat(len(wanted), 1, 1),
            encoder_attention_mask=mask.repeat(len(wanted), 1), timestep=t.repeat(len(wanted)),
            return_dict=False,
        )[0].float().split(n)

    predictions = {}
    for source, wanted in fused.by_source.items():
        if source == "reference":
            with torch.no_grad(), lora.adapters_disabled(transformer):
                predictions.update(zip(wanted, call(wanted)))
        else:
            predictions.update(zip(wanted, call(wanted)))
    expected = dpo.loss(ObjectiveInputs(
        predictions=predictions,
        targets={"w": noise - batch.x0_w, "l": noise - batch.x0_l},
        t_fraction=t / 1000,
        weight=compute_loss_weighting_for_sd3(settings.get("loss_weighting", "none"), sigmas=t / 1000),
    )).loss
    expected_grads = torch.autograd.grad(expected, [p for p in transformer.parameters() if p.requires_grad])

    assert transformer.config.timestep_scale == 1.0
    assert torch.equal(loss, expected)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
    assert all(bool(g.abs().sum() > 0) for g in grads)


def test_preconditioned_outputs_predict_x0(tiny_sana):
    """precondition_outputs: prediction x_t − σ·v̂ (the raw velocity, re-based), target x0."""
    plain = load_backbone(SanaBackbone, tiny_sana, "full")
    edm = load_backbone(SanaBackbone, tiny_sana, "full", precondition_outputs=True)
    x0, noise = torch.randn(2, *LATENT), torch.randn(2, *LATENT)
    t = torch.tensor([250.0, 800.0])
    x_t = edm.add_noise(x0, noise, t)
    cond = plain.encode_prompts(PROMPTS[:2])
    velocity = plain.predict(x_t, t, cond, "student")
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(edm.predict(x_t, t, cond, "student"), x_t - sigma * velocity, atol=1e-6)
    assert torch.equal(edm.regression_target(x0, noise, t), x0)
    # A perfect velocity gives back x0 exactly (up to rounding).
    assert torch.allclose(x_t - sigma * (noise - x0), x0, atol=1e-5)
    check_training_step(load_backbone(SanaBackbone, tiny_sana, "lora", precondition_outputs=True), "ddspo")


def test_dynamic_shift_is_the_pipelines_resolution_shift(tiny_sana):
    """dynamic_shift: σ → exp(μ)/(exp(μ) + 1/σ − 1), μ from the token count as the pipelines compute it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    backbone = load_backbone(SanaBackbone, tiny_sana, dynamic_shift=True)
    unshifted = load_backbone(SanaBackbone, tiny_sana)
    tokens = (SANA_RESOLUTION // 2) ** 2  # DC-AE downsamples by 2 here; SANA's patch is 1
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    sigma = unshifted.sample_timesteps(64, torch.Generator().manual_seed(0)) / 1000
    expected = math.exp(mu) / (math.exp(mu) + (1 / sigma - 1)) * 1000
    assert torch.allclose(backbone.sample_timesteps(64, torch.Generator().manual_seed(0)), expected)
    with pytest.raises(ValueError, match="exclude each other"):
        SanaBackbone.Config(shift=3.0, dynamic_shift=True)


# ---------------------------------------------------------------------------- prompts, data, sampling


def test_prompts_are_gemma_states_with_a_mask(tiny_sana):
    backbone = load_backbone(SanaBackbone, tiny_sana)
    cond = backbone.encode_prompts(PROMPTS)
    assert cond["encoder_hidden_states"].shape == (3, 300, 8)
    assert cond["encoder_attention_mask"].shape == (3, 300)
    assert cond["encoder_attention_mask"].dtype == torch.long
    short = load_backbone(SanaBackbone, tiny_sana, max_sequence_length=64).encode_prompts(PROMPTS)
    assert short["encoder_hidden_states"].shape == (3, 64, 8)


def test_prompts_carry_the_official_complex_human_instruction_by_default(tiny_sana, monkeypatch):
    """Training prompts: the official DDSPO text (the pipeline's, last line without its trailing space)."""
    from diffusers import SanaPipeline

    from prefopt_backbones.sana import _pipeline_instruction

    seen = []
    encode = SanaPipeline.encode_prompt

    def record(self, *args, **kwargs):
        seen.append(kwargs["complex_human_instruction"])
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(SanaPipeline, "encode_prompt", record)
    instructed = load_backbone(SanaBackbone, tiny_sana)
    instructed.encode_prompts(PROMPTS[:1])
    pipeline_text = _pipeline_instruction()
    assert seen[-1][:-1] == pipeline_text[:-1] and seen[-1][-1] == "User Prompt:" != pipeline_text[-1]
    assert instructed._sample_kwargs()["complex_human_instruction"] == pipeline_text

    plain = load_backbone(SanaBackbone, tiny_sana, complex_human_instruction=False)
    assert plain._sample_kwargs()["complex_human_instruction"] is None
    with_text = instructed.encode_prompts(PROMPTS[:1])["encoder_hidden_states"]
    without = plain.encode_prompts(PROMPTS[:1])["encoder_hidden_states"]
    assert seen[-1] is None
    assert with_text.shape == without.shape and not torch.allclose(with_text, without)


def test_identity_and_data_round_trip(tiny_sana):
    backbone = load_backbone(SanaBackbone, tiny_sana)
    assert backbone.data_signature() == {
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
        use_resolution_binning=False,  # and the pipeline's own complex human instruction, as by default
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
    assert described["forward_process"]["shift"] == "from the scheduler config"
    assert described["forward_process"]["dynamic_shift"] is False
