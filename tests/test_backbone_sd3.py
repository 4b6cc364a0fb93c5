"""The ``sd3`` backbone on a tiny random StableDiffusion3Pipeline (CPU, offline).

The tiny pipeline has the real classes: SD3Transformer2DModel, two
CLIPTextModelWithProjection encoders, a T5EncoderModel, an AutoencoderKL with
SD3's shift and scale, and FlowMatchEulerDiscreteScheduler(shift=3.0) as in the
SD3 / SD3.5 hub configs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    CLIP_MAX_LENGTH,
    PROMPTS,
    SD3_VAE,
    SD_RESOLUTION,
    check_fused_step_calls,
    check_reference_is_frozen,
    check_training_step,
    load_backbone,
    objective,
    train_steps,
)

from prefopt_backbones.sd3 import SD3_LORA_TARGETS, SD3Backbone

OBJECTIVES = ["ddspo", "diffusion_dpo", "diffusion_kto"]
LATENT = (4, SD_RESOLUTION // 2, SD_RESOLUTION // 2)
# The last MMDiT block keeps only the image stream: its text-stream query feeds nothing.
TEXT_QUERY_OF_LAST_BLOCK = ("transformer_blocks.1.attn.add_q_proj.",)


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_step(tiny_sd3, objective_name, mode):
    check_training_step(load_backbone(SD3Backbone, tiny_sd3, mode), objective_name, TEXT_QUERY_OF_LAST_BLOCK)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_one_reference_call_and_one_student_call(tiny_sd3, mode, monkeypatch):
    check_fused_step_calls(load_backbone(SD3Backbone, tiny_sd3, mode), monkeypatch)


def test_reference_prediction_is_frozen(tiny_sd3):
    check_reference_is_frozen(load_backbone(SD3Backbone, tiny_sd3))


def test_defaults_are_the_official_ddspo_sd3_run(tiny_sd3):
    """precondition_outputs on, logit-normal u, LoRA on both streams' attention, T5 at 77 tokens, VAE in fp32,
    and σ from the scheduler config's shift-3 table at ⌊u·T⌋ (official ddspo/adapters/sd3.py)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    config = SD3Backbone.Config()
    assert (config.precondition_outputs, config.timestep_density, config.loss_weighting) == (True, "logit_normal", "none")
    assert (config.max_sequence_length, config.vae_dtype, config.shift) == (77, "float32", None)
    assert config.finetune.target_modules == SD3_LORA_TARGETS
    assert SD3Backbone.Config(finetune={"rank": 4}).finetune.target_modules == SD3_LORA_TARGETS

    backbone = load_backbone(SD3Backbone, tiny_sd3)
    lora_layers = {name.rsplit(".lora_A", 1)[0] for name, _ in backbone.trainable_module().named_parameters()
                   if ".lora_A." in name}
    assert len(lora_layers) == 2 * len(SD3_LORA_TARGETS) - 1  # the last block has no to_add_out
    t = backbone.sample_timesteps(64, torch.Generator().manual_seed(0))
    u = compute_density_for_timestep_sampling("logit_normal", 64, 0.0, 1.0, 1.29, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, FlowMatchEulerDiscreteScheduler(shift=3.0).timesteps[(u * 1000).long()])
    x0, noise = torch.randn(2, *LATENT), torch.randn(2, *LATENT)
    assert torch.equal(backbone.regression_target(x0, noise, t[:2]), x0)
    assert backbone.prediction_type() == "sample"  # preconditioned: predict returns x0
    assert load_backbone(SD3Backbone, tiny_sd3, precondition_outputs=False).prediction_type() == "flow"


def test_shift_setting_overrides_the_config(tiny_sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler

    backbone = load_backbone(SD3Backbone, tiny_sd3, shift=1.0, timestep_density="uniform")
    t = backbone.sample_timesteps(64, torch.Generator().manual_seed(0))
    u = torch.rand(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, FlowMatchEulerDiscreteScheduler(shift=1.0).timesteps[(u * 1000).long()])


# ---------------------------------------------------------------------------- prompts


def _pipeline(tiny_sd3, **components):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(tiny_sd3, **components)


def test_prompts_are_the_pipelines_joint_embeddings(tiny_sd3):
    """Both CLIPs' penultimate states (padded to T5's width) then 77 T5 states; pooled: both projections."""
    cond = load_backbone(SD3Backbone, tiny_sd3).encode_prompts(PROMPTS)
    embeds, _, pooled, _ = _pipeline(tiny_sd3).encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=77
    )
    assert cond["encoder_hidden_states"].shape == (3, CLIP_MAX_LENGTH + 77, 32)
    assert cond["pooled_projections"].shape == (3, 16)
    assert torch.allclose(cond["encoder_hidden_states"], embeds, atol=1e-5)
    assert torch.allclose(cond["pooled_projections"], pooled, atol=1e-6)


def test_without_t5_its_states_are_zeros(tiny_sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    with_t5 = load_backbone(SD3Backbone, tiny_sd3).encode_prompts(PROMPTS)
    backbone = load_backbone(SD3Backbone, tiny_sd3, "full", t5=False)
    assert backbone.modules["text_encoder_3"] is None and backbone.modules["tokenizer_3"] is None
    assert backbone.describe()["components"]["text_encoder_3"] is None
    cond = backbone.encode_prompts(PROMPTS)
    clip = slice(0, CLIP_MAX_LENGTH)
    assert torch.equal(cond["encoder_hidden_states"][:, CLIP_MAX_LENGTH:], torch.zeros(3, 77, 32))
    assert torch.allclose(cond["encoder_hidden_states"][:, clip], with_t5["encoder_hidden_states"][:, clip])
    assert torch.allclose(cond["pooled_projections"], with_t5["pooled_projections"])

    check_training_step(backbone, "ddspo", TEXT_QUERY_OF_LAST_BLOCK)
    backbone.save(str(tmp_path / "final"))
    # A pipeline saved without T5 loads as diffusers loads SD3 without T5.
    pipeline = StableDiffusion3Pipeline.from_pretrained(tmp_path / "final", text_encoder_3=None, tokenizer_3=None)
    assert _generate(pipeline).shape == (1, SD_RESOLUTION, SD_RESOLUTION, 3)


# ---------------------------------------------------------------------------- the denoiser, data, sampling


def test_velocity_is_the_pipelines_one_step_update(tiny_sd3):
    """One Euler step from pure noise (σ = 1 → 0) is x_T − v(x_T, t=1000): the backbone's prediction must give
    the pipeline's result on the same noise, prompt and text length (CFG off)."""
    backbone = load_backbone(SD3Backbone, tiny_sd3, precondition_outputs=False, max_sequence_length=256)
    noise = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1000.0])
    velocity = backbone.predict(noise, t, backbone.encode_prompts(PROMPTS[:1]), "student")
    expected = _pipeline(tiny_sd3)(
        PROMPTS[:1], num_inference_steps=1, guidance_scale=1.0, height=SD_RESOLUTION, width=SD_RESOLUTION,
        generator=torch.Generator().manual_seed(4), output_type="latent",
    ).images
    assert torch.allclose(noise - velocity, expected, atol=1e-5)


def test_identity_and_data_are_shifted_and_scaled_latents(tiny_sd3):
    backbone = load_backbone(SD3Backbone, tiny_sd3)
    assert backbone.data_signature() == {
        "family": "sd3", "data_space": "latent", "data_shape": list(LATENT),
        "latent_scaling_factor": SD3_VAE["scaling_factor"], "latent_shift_factor": SD3_VAE["shift_factor"],
    }
    latents = backbone.sample(PROMPTS[:2], [0, 1])
    assert latents.shape == (2, *LATENT)
    images = backbone.decode(latents)
    assert images[0].size == (SD_RESOLUTION, SD_RESOLUTION)
    from prefopt_backbones import images as image_io

    pixels = image_io.to_pixels(images, SD_RESOLUTION)
    with torch.no_grad():
        mean = backbone.modules["vae"].encode(pixels).latent_dist.mode()
    expected = (mean - SD3_VAE["shift_factor"]) * SD3_VAE["scaling_factor"]
    assert torch.allclose(backbone.encode_data(images), expected, atol=1e-6)


def test_sample_matches_the_diffusers_pipeline(tiny_sd3):
    backbone = load_backbone(SD3Backbone, tiny_sd3, train=False)
    expected = _pipeline(tiny_sd3)(
        PROMPTS[:2], num_inference_steps=2, guidance_scale=7.5, height=SD_RESOLUTION, width=SD_RESOLUTION,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="latent",
    ).images
    assert torch.allclose(backbone.sample(PROMPTS[:2], [3, 4]), expected, atol=1e-5)


# ---------------------------------------------------------------------------- saving


def _generate(pipeline) -> np.ndarray:
    return pipeline("a red car", num_inference_steps=2, height=SD_RESOLUTION, width=SD_RESOLUTION,
                    output_type="np").images


def _assert_pipeline_transformer_is_student(transformer, backbone):
    """The pipeline's transformer gives the student's velocity (the backbone has preconditioning off)."""
    x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100.0, 700.0])
    cond = backbone.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        expected = backbone.predict(x, t, cond, "student")
        got = transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                          pooled_projections=cond["pooled_projections"]).sample
    assert not torch.allclose(expected, backbone.predict(x, t, cond, "reference"))
    assert torch.allclose(got, expected, atol=1e-5)


def test_lora_save_loads_into_the_pipeline(tiny_sd3, tmp_path):
    backbone = load_backbone(SD3Backbone, tiny_sd3, "lora", precondition_outputs=False,
                             finetune={"rank": 4, "alpha": 8})
    train_steps(backbone, objective("ddspo"), 2)
    backbone.save(str(tmp_path / "final"))
    pipeline = _pipeline(tiny_sd3)
    pipeline.load_lora_weights(tmp_path / "final")
    _assert_pipeline_transformer_is_student(pipeline.transformer, backbone)
    assert np.isfinite(_generate(pipeline)).all()

    fresh = load_backbone(SD3Backbone, tiny_sd3, "lora", precondition_outputs=False)  # the saved rank wins
    fresh.load_trained(str(tmp_path / "final"))
    _assert_pipeline_transformer_is_student(pipeline.transformer, fresh)


def test_full_save_is_a_pipeline(tiny_sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    backbone = load_backbone(SD3Backbone, tiny_sd3, "full", precondition_outputs=False)
    train_steps(backbone, objective("diffusion_dpo"), 1)
    backbone.save(str(tmp_path / "final"))
    pipeline = StableDiffusion3Pipeline.from_pretrained(tmp_path / "final")
    _assert_pipeline_transformer_is_student(pipeline.transformer, backbone)
    assert _generate(pipeline).shape == (1, SD_RESOLUTION, SD_RESOLUTION, 3)


def test_describe_reads_nothing():
    described = SD3Backbone(SD3Backbone.Config(pretrained="stabilityai/stable-diffusion-3.5-large")).describe()
    assert described["pipeline"] == "StableDiffusion3Pipeline"
    assert described["components"]["text_encoder_3"] == (
        "T5EncoderModel from stabilityai/stable-diffusion-3.5-large/text_encoder_3"
    )
    assert described["trained"]["target_modules"] == SD3_LORA_TARGETS
    assert described["forward_process"]["kind"] == "flow matching (target x0, EDM-preconditioned)"


# ---------------------------------------------------------------------------- the shipped recipes

# The official DDSPO SD3 run (KU-MIIL/DDSPO f8e47a5, scripts/train_ddspo_sd3.sh, ddspo/args.py defaults,
# ddspo/adapters/sd3.py, ddspo/prepare_latents.py): per GPU 4 × GA 256, "effective batch 2048" = 2 GPUs,
# lr 4e-8 --scale_lr, constant, no warmup, 100 steps, beta 2000, fp16, AdamW (0.9, 0.999) wd 0.01,
# clip 1.0, checkpoints every 50; LoRA r128 = alpha, gaussian init, DEFAULT_LORA_TARGETS; transformer
# weights fp32 (autocast), VAE fp32; logit-normal u (0, 1), preconditioned outputs, no σ weighting,
# the scheduler config's σ table; T5 at 77 tokens; pairs from 25 steps at CFG 7.5, pipeline T5 length.
OFFICIAL_SD3 = {
    "train": {"batch_size": 4, "grad_accum": 256, "lr": 4e-8, "scale_lr": True, "lr_scheduler": "constant",
              "warmup_steps": 0, "max_steps": 100, "optimizer": "adamw", "adam_betas": [0.9, 0.999],
              "weight_decay": 0.01, "max_grad_norm": 1.0, "mixed_precision": "fp16", "checkpoint_every": 50},
    "objective": {"name": "ddspo", "beta": 2000.0, "weighting": "none", "noise": "shared"},
    "backbone": {"finetune": {"mode": "lora", "rank": 128, "alpha": 128.0, "init": "gaussian",
                              "target_modules": SD3_LORA_TARGETS},
                 "denoiser_dtype": "float32", "vae_dtype": "float32", "t5": True, "max_sequence_length": 77,
                 "shift": None, "dynamic_shift": False, "timestep_density": "logit_normal", "logit_mean": 0.0,
                 "logit_std": 1.0, "loss_weighting": "none", "precondition_outputs": True, "resolution": 1024,
                 "num_inference_steps": 25, "guidance_scale": 7.5, "sampling_max_sequence_length": 256},
}


@pytest.mark.parametrize(
    "name, pretrained, mixed_precision",
    [("sd3_ddspo", "stabilityai/stable-diffusion-3-medium-diffusers", "fp16"),
     # SD3.5 takes the SD3 run's values; only its precision is the model card's bfloat16.
     ("sd35_ddspo", "stabilityai/stable-diffusion-3.5-large", "bf16")],
)
def test_shipped_recipe_is_the_official_sd3_run(name, pretrained, mixed_precision):
    from pathlib import Path

    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    path = Path(__file__).resolve().parent.parent / "recipes" / f"{name}.yaml"
    data = load_recipe(path, PluginRegistry()).to_dict()
    expected = {**OFFICIAL_SD3, "train": {**OFFICIAL_SD3["train"], "mixed_precision": mixed_precision}}
    for section, values in expected.items():
        for key, value in values.items():
            got = data[section][key]
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{section}.{key}"
    assert data["backbone"]["name"] == "sd3" and data["backbone"]["pretrained"] == pretrained
    assert data["pairs"]["source"] == {**data["pairs"]["source"], "name": "random_removal", "min_drop": 0.4,
                                       "max_drop": 0.7, "draws": 5, "variants": 1}


# ---------------------------------------------------------------------------- end to end


def test_prefopt_run_trains_and_final_loads_into_the_pipeline(tiny_sd3, tmp_path):
    """`prefopt run` on the tiny SD3 (pairs sampled by the pipeline, cached text, 2 DDSPO steps), then final/
    loads into StableDiffusion3Pipeline and samples."""
    import json

    import yaml
    from helpers import metric_rows

    from prefopt.stages import run_recipe
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog sitting under a tree\n")
    recipe = {
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd3", "pretrained": str(tiny_sd3), "finetune": {"rank": 4},
                     "resolution": SD_RESOLUTION, "num_inference_steps": 2, "sampling_max_sequence_length": 16},
        "pairs": {"source": {"name": "random_removal", "variants": 1}, "prompts": {"path": "prompts.txt"}},
        "objective": {"name": "ddspo", "beta": 2000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "text_cache": True},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    registry = PluginRegistry()
    run_recipe(load_recipe(tmp_path / "recipe.yaml", registry), registry)
    run = tmp_path / "run"

    assert json.loads((run / "pairs" / "manifest.json").read_text())["num_rows"] == 3
    metrics = metric_rows(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)
    pipeline = _pipeline(tiny_sd3)
    pipeline.load_lora_weights(run / "final")
    assert np.isfinite(_generate(pipeline)).all()


# ---------------------------------------------------------------------------- the FLOPs docs/performance.md states

# transformer/config.json of the hub models.
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")


def documented_forward_tflop(row_start: str) -> float:
    """The forward TFLOP of a row of docs/performance.md's FLOPs table."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "performance.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith(row_start))
    return float(row.split("|")[2].split()[0])


@pytest.mark.slow
@pytest.mark.parametrize("config, row", [(SD3_MEDIUM, "| SD3-Medium"), (SD35_LARGE, "| SD3.5-Large")])
def test_documented_flops_are_the_flop_counters(config, row):
    """One 1024-px forward with the official run's 77 CLIP + 77 T5 tokens, counted on meta tensors."""
    from diffusers import SD3Transformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = SD3Transformer2DModel(**config)
        inputs = dict(hidden_states=torch.randn(1, 16, 128, 128), encoder_hidden_states=torch.randn(1, 154, 4096),
                      pooled_projections=torch.randn(1, 2048), timestep=torch.tensor([500.0]))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert counter.get_total_flops() / 1e12 == pytest.approx(documented_forward_tflop(row), abs=0.05)
