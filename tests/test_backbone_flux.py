"""The ``flux`` backbone on tiny random FluxPipelines (CPU, offline).

The tiny pipelines have the real classes: FluxTransformer2DModel (with the
guidance embedding, like FLUX.1-dev, or without, like schnell), CLIPTextModel,
T5EncoderModel, an AutoencoderKL with FLUX's shift and scale, and
FlowMatchEulerDiscreteScheduler with dynamic shifting as in FLUX.1-dev's config.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import (
    FLUX_RESOLUTION,
    FLUX_VAE,
    PROMPTS,
    build_flux,
    check_fused_step_calls,
    check_reference_is_frozen,
    check_training_step,
    load_backbone,
    objective,
    train_steps,
)

from prefopt.errors import PrefoptError
from prefopt_backbones.flux import FluxBackbone

OBJECTIVES = ["ddspo", "diffusion_dpo", "diffusion_kto"]
LATENT = (4, FLUX_RESOLUTION // 2, FLUX_RESOLUTION // 2)
TOKENS = 16  # T5 prompt tokens in these tests (FLUX: 512)


def _backbone(pretrained, mode="lora", **settings):
    return load_backbone(FluxBackbone, pretrained, mode, resolution=FLUX_RESOLUTION, max_sequence_length=TOKENS,
                         **settings)


@pytest.fixture(scope="module")
def tiny_flux_schnell(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("tiny-flux-schnell"), guidance_embeds=False)


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_step(tiny_flux, objective_name, mode):
    check_training_step(_backbone(tiny_flux, mode), objective_name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_one_reference_call_and_one_student_call(tiny_flux, mode, monkeypatch):
    check_fused_step_calls(_backbone(tiny_flux, mode), monkeypatch)


def test_reference_prediction_is_frozen(tiny_flux):
    check_reference_is_frozen(_backbone(tiny_flux))


# ---------------------------------------------------------------------------- the denoiser


def _pipeline(pretrained):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(pretrained)


def _one_step(pipeline, seed, **kwargs):
    """The pipeline's one Euler step from pure noise, unpacked: x_T − v(x_T, σ=1)."""
    from diffusers import FluxPipeline

    packed = pipeline(PROMPTS[:1], num_inference_steps=1, height=FLUX_RESOLUTION, width=FLUX_RESOLUTION,
                      generator=torch.Generator().manual_seed(seed), output_type="latent",
                      max_sequence_length=TOKENS, **kwargs).images
    return FluxPipeline._unpack_latents(packed, FLUX_RESOLUTION, FLUX_RESOLUTION, 2)


@pytest.mark.parametrize("guidance", [3.5, 1.0])
def test_velocity_is_the_pipelines_one_step_update(tiny_flux, guidance):
    """Packing, image and text ids, σ as the timestep and the guidance embedding, as FluxPipeline calls them:
    one Euler step from pure noise (σ = 1 → 0) is x_T − v, on the same noise, prompt and guidance."""
    backbone = _backbone(tiny_flux, guidance=guidance)
    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(4))
    velocity = backbone.predict(noise, torch.tensor([1000.0]), backbone.encode_prompts(PROMPTS[:1]), "student")
    expected = _one_step(_pipeline(tiny_flux), 4, guidance_scale=guidance)
    assert torch.allclose(noise - velocity, expected, atol=1e-5)
    other = _one_step(_pipeline(tiny_flux), 4, guidance_scale=guidance + 2)
    assert not torch.allclose(expected, other)  # the guidance value reaches the model


def test_schnell_has_no_guidance_input(tiny_flux_schnell, monkeypatch):
    from diffusers import FluxTransformer2DModel

    seen = []
    forward = FluxTransformer2DModel.forward

    def record(self, *args, guidance=None, **kwargs):
        seen.append(guidance)
        return forward(self, *args, guidance=guidance, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", record)
    backbone = _backbone(tiny_flux_schnell)
    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(4))
    velocity = backbone.predict(noise, torch.tensor([1000.0]), backbone.encode_prompts(PROMPTS[:1]), "student")
    assert seen == [None]
    assert torch.allclose(noise - velocity, _one_step(_pipeline(tiny_flux_schnell), 4), atol=1e-5)
    check_training_step(backbone, "ddspo")


def test_training_sigma_is_unshifted_like_diffusers_flux_script_unless_dynamic(tiny_flux):
    """FLUX.1-dev's config shifts dynamically, so the table diffusers' FLUX script indexes is unshifted;
    dynamic_shift applies the sampler's shift for this resolution's token count instead."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    plain = _backbone(tiny_flux)
    u = torch.rand(64, generator=torch.Generator().manual_seed(0))
    t = plain.sample_timesteps(64, torch.Generator().manual_seed(0))
    assert torch.equal(t, 1000 - (u * 1000).long().float())
    tokens = (FLUX_RESOLUTION // 2 // 2) ** 2  # VAE /2, then 2x2 packing
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    sigma = t / 1000
    shifted = _backbone(tiny_flux, dynamic_shift=True).sample_timesteps(64, torch.Generator().manual_seed(0))
    assert torch.allclose(shifted, math.exp(mu) / (math.exp(mu) + (1 / sigma - 1)) * 1000)


def test_resolution_must_pack(tiny_flux):
    with pytest.raises(PrefoptError, match="2x2 packing"):
        FluxBackbone(FluxBackbone.Config(pretrained=str(tiny_flux), resolution=18)).data_signature()


# ---------------------------------------------------------------------------- data, sampling


def test_identity_and_data_are_unpacked_shifted_latents(tiny_flux):
    backbone = _backbone(tiny_flux)
    assert backbone.data_signature() == {
        "family": "flux", "data_space": "latent", "data_shape": list(LATENT),
        "latent_scaling_factor": FLUX_VAE["scaling_factor"], "latent_shift_factor": FLUX_VAE["shift_factor"],
    }
    latents = backbone.sample(PROMPTS[:2], [0, 1])
    assert latents.shape == (2, *LATENT)
    images = backbone.decode(latents)
    assert images[0].size == (FLUX_RESOLUTION, FLUX_RESOLUTION)
    assert backbone.encode_data(images).shape == (2, *LATENT)


def test_sample_matches_the_diffusers_pipeline(tiny_flux):
    from diffusers import FluxPipeline

    backbone = load_backbone(FluxBackbone, tiny_flux, train=False, resolution=FLUX_RESOLUTION,
                             max_sequence_length=TOKENS)
    packed = _pipeline(tiny_flux)(
        PROMPTS[:2], num_inference_steps=2, guidance_scale=3.5, height=FLUX_RESOLUTION, width=FLUX_RESOLUTION,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent",
        max_sequence_length=TOKENS,
    ).images
    expected = FluxPipeline._unpack_latents(packed, FLUX_RESOLUTION, FLUX_RESOLUTION, 2)
    assert torch.allclose(backbone.sample(PROMPTS[:2], [3, 4]), expected, atol=1e-5)


# ---------------------------------------------------------------------------- saving


def _generate(pipeline) -> np.ndarray:
    return pipeline("a red car", num_inference_steps=2, height=FLUX_RESOLUTION, width=FLUX_RESOLUTION,
                    max_sequence_length=TOKENS, output_type="np").images


def _assert_pipeline_gives_student(pipeline, backbone):
    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(4))
    cond = backbone.encode_prompts(PROMPTS[:1])
    t = torch.tensor([1000.0])
    student = backbone.predict(noise, t, cond, "student")
    assert not torch.allclose(student, backbone.predict(noise, t, cond, "reference"))
    assert torch.allclose(noise - student, _one_step(pipeline, 4, guidance_scale=3.5), atol=1e-5)


def _recipe_target_modules():
    import yaml

    path = Path(__file__).resolve().parent.parent / "recipes" / "flux_ddspo.yaml"
    return yaml.safe_load(path.read_text())["backbone"]["finetune"][
        "target_modules"]


@pytest.mark.parametrize("targets", ["default", "recipe"])
def test_lora_save_loads_into_the_pipeline(tiny_flux, tmp_path, targets):
    """The default targets and flux_ddspo.yaml's (the diffusers FLUX script's 12 layers: both streams'
    attention and feed-forwards) train, save and load into FluxPipeline."""
    finetune = {"rank": 4, "alpha": 8}
    if targets == "recipe":
        finetune["target_modules"] = _recipe_target_modules()
    backbone = _backbone(tiny_flux, finetune=finetune)
    if targets == "recipe":
        adapted = {name for name, module in backbone.trainable_module().named_modules() if hasattr(module, "lora_A")}
        assert "transformer_blocks.0.ff_context.net.2" in adapted
        assert "transformer_blocks.0.attn.add_q_proj" in adapted
        assert "single_transformer_blocks.0.attn.to_q" in adapted  # the single blocks' shared attention
        assert "single_transformer_blocks.0.proj_mlp" not in adapted  # not a target of the script
    train_steps(backbone, objective("ddspo"), 2)
    backbone.save(str(tmp_path / "final"))
    pipeline = _pipeline(tiny_flux)
    pipeline.load_lora_weights(tmp_path / "final")
    _assert_pipeline_gives_student(pipeline, backbone)
    assert np.isfinite(_generate(pipeline)).all()

    fresh = _backbone(tiny_flux)  # default rank: the saved one wins
    fresh.load_trained(str(tmp_path / "final"))
    _assert_pipeline_gives_student(pipeline, fresh)


def test_full_save_is_a_pipeline(tiny_flux, tmp_path):
    backbone = _backbone(tiny_flux, "full")
    train_steps(backbone, objective("diffusion_dpo"), 1)
    backbone.save(str(tmp_path / "final"))
    pipeline = _pipeline(tmp_path / "final")
    _assert_pipeline_gives_student(pipeline, backbone)
    assert _generate(pipeline).shape == (1, FLUX_RESOLUTION, FLUX_RESOLUTION, 3)


def test_describe_reads_nothing():
    described = FluxBackbone(FluxBackbone.Config()).describe()
    assert described["pipeline"] == "FluxPipeline"
    assert described["components"]["transformer"] == (
        "FluxTransformer2DModel from black-forest-labs/FLUX.1-dev/transformer"
    )
    assert described["forward_process"]["kind"] == "flow matching (target noise - x0)"
    assert described["sampling"]["guidance_scale"] == 3.5
    assert described["forward_process"]["guidance"].startswith("3.5")


def test_shipped_recipe_takes_the_official_sd3_run_and_the_diffusers_flux_script():
    """recipes/flux_ddspo.yaml: the DDSPO values of the official SD3 run (the code has no FLUX run); the FLUX
    values of diffusers' train_dreambooth_lora_flux.py defaults and FluxPipeline's."""

    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    path = Path(__file__).resolve().parent.parent / "recipes" / "flux_ddspo.yaml"
    data = load_recipe(path, PluginRegistry()).to_dict()
    official_sd3 = {
        "train": {"batch_size": 4, "grad_accum": 256, "lr": 4e-8, "scale_lr": True, "lr_scheduler": "constant",
                  "warmup_steps": 0, "max_steps": 100, "optimizer": "adamw", "weight_decay": 0.01,
                  "max_grad_norm": 1.0, "checkpoint_every": 50},
        "objective": {"name": "ddspo", "beta": 2000.0, "weighting": "none", "noise": "shared"},
        "backbone": {"resolution": 1024},
    }
    diffusers_flux = {
        "backbone": {"pretrained": "black-forest-labs/FLUX.1-dev", "guidance": 3.5, "max_sequence_length": 512,
                     "shift": None, "dynamic_shift": False, "timestep_density": "uniform", "loss_weighting": "none",
                     "precondition_outputs": False, "num_inference_steps": 28, "guidance_scale": 3.5,
                     "denoiser_dtype": "auto", "text_encoder_dtype": "auto", "vae_dtype": "auto"},
        "train": {"mixed_precision": "bf16"},
    }
    for table in (official_sd3, diffusers_flux):
        for section, values in table.items():
            for key, value in values.items():
                assert data[section][key] == value, f"{section}.{key}"
    assert data["backbone"]["finetune"] == {"mode": "lora", "rank": 128, "alpha": 128.0, "init": "gaussian",
                                            "target_modules": [
                                                "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                                                "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj",
                                                "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                                                "ff_context.net.0.proj", "ff_context.net.2"]}


def test_prefopt_run_trains_and_final_loads_into_the_pipeline(tiny_flux, tmp_path):
    """`prefopt run` on the tiny FLUX (pairs sampled by the pipeline, 2 DDSPO steps), then final/ loads into
    FluxPipeline with load_lora_weights and samples."""
    import json

    import yaml
    from helpers import metric_rows

    from prefopt.stages import run_recipe
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog sitting under a tree\n")
    recipe = {
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "flux", "pretrained": str(tiny_flux), "finetune": {"rank": 4},
                     "resolution": FLUX_RESOLUTION, "num_inference_steps": 2, "max_sequence_length": TOKENS},
        "pairs": {"source": {"name": "random_removal", "variants": 1}, "prompts": {"path": "prompts.txt"}},
        "objective": {"name": "ddspo", "beta": 2000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    registry = PluginRegistry()
    run_recipe(load_recipe(tmp_path / "recipe.yaml", registry), registry)
    run = tmp_path / "run"

    assert json.loads((run / "pairs" / "manifest.json").read_text())["num_rows"] == 3
    metrics = metric_rows(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)
    pipeline = _pipeline(tiny_flux)
    pipeline.load_lora_weights(run / "final")
    assert np.isfinite(_generate(pipeline)).all()


@pytest.mark.slow
def test_documented_flops_are_the_flop_counters():
    """FLUX.1-dev (its hub transformer config), one 1024-px forward with 512 T5 tokens, counted on meta tensors."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from test_backbone_sd3 import documented_forward_tflop
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        inputs = dict(hidden_states=torch.randn(1, 4096, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                      pooled_projections=torch.randn(1, 768), timestep=torch.tensor([0.5]),
                      guidance=torch.tensor([3.5]), txt_ids=torch.zeros(512, 3),
                      img_ids=FluxPipeline._prepare_latent_image_ids(1, 64, 64, "meta", torch.float32))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert counter.get_total_flops() / 1e12 == pytest.approx(documented_forward_tflop("| FLUX.1-dev"), abs=0.05)
