"""The ``sd`` backbone on a tiny random Stable Diffusion pipeline (CPU, offline)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_models import (
    PROMPTS,
    SD_RESOLUTION,
    check_reference_is_frozen,
    check_training_step,
    cpu_runtime,
    load_backbone,
    objective,
    pair_batch,
    probe,
    train_steps,
)

from prefopt.errors import DataError, MissingDependencyError, PrefoptError
from prefopt_backbones.sd import SDBackbone

OBJECTIVES = ["ddspo", "diffusion_dpo", "diffusion_kto"]


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_step(tiny_sd, objective_name, mode):
    check_training_step(load_backbone(SDBackbone, tiny_sd, mode), objective_name)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_reference_prediction_is_frozen(tiny_sd, mode):
    check_reference_is_frozen(load_backbone(SDBackbone, tiny_sd, mode))


def test_lora_student_and_reference_share_one_unet(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    assert backbone._reference_module is backbone.trainable_module()
    trainable = [n for n, p in backbone.trainable_module().named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in backbone.trainable_parameters())


def test_full_reference_is_a_frozen_copy(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, "full")
    assert backbone._reference_module is None  # loaded when first asked for
    reference = backbone._get_reference_module()
    assert reference is not backbone.trainable_module()
    assert not any(p.requires_grad for p in reference.parameters())
    assert not reference.training
    assert all(p.requires_grad for p in backbone.trainable_module().parameters())


# ---------------------------------------------------------------------------- forward process


def test_epsilon_forward_process_is_ddpm(tiny_sd):
    from diffusers import DDPMScheduler

    backbone = load_backbone(SDBackbone, tiny_sd)
    scheduler = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = backbone.sample_timesteps(4, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < 1000
    assert torch.equal(backbone.add_noise(x0, noise, t), scheduler.add_noise(x0, noise, t))
    assert torch.equal(backbone.regression_target(x0, noise, t), noise)
    assert torch.allclose(backbone.t_fraction(torch.tensor([0, 999])), torch.tensor([0.0, 1.0]))
    assert torch.equal(backbone.loss_weight(t), torch.ones(4))


def test_timesteps_come_from_the_engine_generator(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd)
    first = backbone.sample_timesteps(16, torch.Generator().manual_seed(3))
    assert torch.equal(first, backbone.sample_timesteps(16, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("override", [None, "v_prediction"])
def test_v_prediction_target_is_the_velocity(tiny_sd, tiny_sd_v, override):
    # Either the scheduler config says v_prediction, or the Config overrides an ε model.
    source = tiny_sd_v if override is None else tiny_sd
    backbone = load_backbone(SDBackbone, source, prediction_type=override)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    expected = backbone._noise.get_velocity(x0, noise, t)
    alpha_bar = backbone._noise.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(expected, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0, atol=1e-6)
    assert torch.equal(backbone.regression_target(x0, noise, t), expected)
    assert backbone._scheduler(None).config.prediction_type == "v_prediction"  # sampling agrees


def test_v_prediction_training_step(tiny_sd_v):
    check_training_step(load_backbone(SDBackbone, tiny_sd_v, "lora"), "diffusion_dpo")


# ---------------------------------------------------------------------------- data, prompts, sampling


def test_identity_is_family_and_latent_shape(tiny_sd):
    backbone = SDBackbone(SDBackbone.Config(pretrained=str(tiny_sd)))
    expected = {"family": "sd", "data_space": "latent", "data_shape": [4, 8, 8], "latent_scaling_factor": 0.18215}
    assert backbone.data_signature() == expected  # before load: read from the configs alone
    backbone.load(cpu_runtime())
    assert backbone.data_signature() == expected
    bigger = SDBackbone(SDBackbone.Config(pretrained=str(tiny_sd), resolution=32))
    assert bigger.data_signature()["data_shape"] == [4, 16, 16]


def test_encode_prompts_tokenises_to_max_length(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd)
    cond = backbone.encode_prompts(PROMPTS)
    assert set(cond) == {"encoder_hidden_states"}
    assert cond["encoder_hidden_states"].shape == (3, 16, 16)  # (prompts, max tokens, hidden)
    single = backbone.encode_prompts(PROMPTS[1:2])
    assert torch.allclose(single["encoder_hidden_states"], cond["encoder_hidden_states"][1:2], atol=1e-6)


def test_sample_is_seeded_per_row(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd)
    both = backbone.sample(PROMPTS[:2], [7, 8])
    assert both.shape == (2, 4, 8, 8) and torch.isfinite(both).all()
    alone = backbone.sample(PROMPTS[1:2], [8])
    assert torch.allclose(alone, both[1:2], atol=1e-5)  # a row does not depend on its batch
    assert not torch.allclose(backbone.sample(PROMPTS[:1], [9]), both[:1])
    # LoRA: student and reference share one UNet, so one pipeline (built at load) serves every call.
    assert len(backbone._pipelines) == 1 and backbone._pipelines[0][1] is backbone._text_pipeline


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_compiled_sampling_draws_what_eager_draws_and_leaves_the_module_eager(tiny_sd, mode, monkeypatch):
    from prefopt.engine import speed

    monkeypatch.setattr(speed, "SAMPLING_BACKEND", "aot_eager")  # the graph inductor would get, without kernels
    eager = load_backbone(SDBackbone, tiny_sd, mode).sample(PROMPTS, [1, 2, 3])
    backbone = load_backbone(SDBackbone, tiny_sd, mode, compile_sampling=True)
    compiled = backbone.sample(PROMPTS, [1, 2, 3])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    reference = backbone._get_reference_module()
    pipeline = backbone._sampling_pipeline(reference)
    assert isinstance(pipeline.unet, torch._dynamo.eval_frame.OptimizedModule) and pipeline.unet._orig_mod is reference
    assert reference._compiled_call_impl is None  # training's forwards stay eager
    # The wrapper reads the weights as inputs (no freezing): a student that trained is sampled as it is now.
    before = backbone.sample(PROMPTS, [1, 2, 3], source="student")
    with torch.no_grad():
        for p in backbone.trainable_module().parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(backbone.sample(PROMPTS, [1, 2, 3], source="student"), before, atol=1e-3)


def test_sample_matches_the_diffusers_pipeline(tiny_sd):
    """Sampled latents are the pipeline's output_type="latent" (already × scaling_factor)."""
    from diffusers import StableDiffusionPipeline

    backbone = load_backbone(SDBackbone, tiny_sd, train=False)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    expected = pipeline(
        PROMPTS[:1], num_inference_steps=2, guidance_scale=7.5, height=SD_RESOLUTION, width=SD_RESOLUTION,
        generator=[torch.Generator().manual_seed(5)], output_type="latent",
    ).images
    assert torch.allclose(backbone.sample(PROMPTS[:1], [5]), expected, atol=1e-5)


def test_encode_data_accepts_images_and_round_trips(tiny_sd, tmp_path):
    backbone = load_backbone(SDBackbone, tiny_sd)
    latents = backbone.sample(PROMPTS[:2], [1, 2])
    images = backbone.decode(latents)
    assert [im.size for im in images] == [(SD_RESOLUTION, SD_RESOLUTION)] * 2
    path = tmp_path / "x.png"
    images[0].save(path)
    as_bytes = path.read_bytes()
    array = np.asarray(images[0])
    big = images[0].resize((40, 24))  # resized on its short side and centre-cropped
    encoded = backbone.encode_data([images[0], as_bytes, str(path), array, big, latents[1]])
    assert encoded.shape == (6, 4, 8, 8)
    for row in encoded[1:4]:
        assert torch.allclose(row, encoded[0])
    assert torch.equal(encoded[5], latents[1])  # tensors are data already
    assert encoded.abs().max() < 100  # scaled like training latents, not raw VAE output
    with pytest.raises(DataError, match="shape"):
        backbone.encode_data([torch.zeros(3, 3)])


def test_sampling_scheduler_is_configurable(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, sampler="EulerDiscreteScheduler")
    assert type(backbone._pipeline(backbone._get_reference_module()).scheduler).__name__ == "EulerDiscreteScheduler"
    assert backbone.sample(PROMPTS[:1], [0]).shape == (1, 4, 8, 8)
    with pytest.raises(PrefoptError, match="not a diffusers scheduler"):
        load_backbone(SDBackbone, tiny_sd, sampler="NoSuchScheduler").sample(PROMPTS[:1], [0])


# ---------------------------------------------------------------------------- pixel space


def test_pixel_space_model(tiny_sd_pixel, tmp_path):
    from diffusers import StableDiffusionPipeline

    backbone = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False)
    assert backbone.data_signature() == {"family": "sd", "data_space": "pixel", "data_shape": [3, 16, 16]}
    x = backbone.sample(PROMPTS[:2], [0, 1])
    assert x.shape == (2, 3, 16, 16)
    images = backbone.decode(x.clamp(-1, 1))
    assert torch.allclose(backbone.encode_data(images), x.clamp(-1, 1), atol=1 / 127.5)  # 8-bit round trip
    check_training_step(backbone, "ddspo")

    backbone.save(str(tmp_path / "final"))
    reloaded = load_backbone(SDBackbone, tmp_path / "final", "full", vae=False)
    assert torch.allclose(probe(reloaded, "reference"), probe(backbone, "student"), atol=1e-6)
    # diffusers cannot record a missing VAE in model_index.json: say so when loading.
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "final", vae=None, safety_checker=None)
    assert pipeline.vae is None


# ---------------------------------------------------------------------------- saving


def test_lora_save_loads_into_the_pipeline(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    backbone = load_backbone(SDBackbone, tiny_sd, "lora", finetune={"rank": 4, "alpha": 8})
    train_steps(backbone, objective("ddspo"), 2)
    backbone.save(str(tmp_path / "final"))

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipeline.load_lora_weights(tmp_path / "final")
    _assert_pipeline_unet_is_student(pipeline.unet, backbone)
    image = pipeline("a red car", num_inference_steps=2, height=SD_RESOLUTION, width=SD_RESOLUTION,
                     output_type="np").images
    assert image.shape == (1, SD_RESOLUTION, SD_RESOLUTION, 3) and np.isfinite(image).all()


def test_full_save_is_a_pipeline(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    backbone = load_backbone(SDBackbone, tiny_sd, "full")
    train_steps(backbone, objective("diffusion_dpo"), 1)
    backbone.save(str(tmp_path / "final"))

    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "final")
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"  # the model's own scheduler
    _assert_pipeline_unet_is_student(pipeline.unet, backbone)
    image = pipeline("a red car", num_inference_steps=2, height=SD_RESOLUTION, width=SD_RESOLUTION,
                     output_type="pil").images[0]
    assert image.size == (SD_RESOLUTION, SD_RESOLUTION)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_load_trained_restores_the_student(tiny_sd, tmp_path, mode, train):
    trained = load_backbone(SDBackbone, tiny_sd, mode, finetune={"rank": 4, "alpha": 8})
    train_steps(trained, objective("diffusion_dpo"), 2)
    trained.save(str(tmp_path / "final"))

    fresh = load_backbone(SDBackbone, tiny_sd, mode, train=train)  # default rank 8: the saved rank 4 wins
    reference = probe(fresh, "reference")
    fresh.load_trained(str(tmp_path / "final"))
    assert torch.allclose(probe(fresh, "student"), probe(trained, "student"), atol=1e-6)
    assert torch.equal(probe(fresh, "reference"), reference)
    assert torch.allclose(fresh.sample(PROMPTS[:1], [3], "student"), trained.sample(PROMPTS[:1], [3], "student"),
                          atol=1e-5)


def test_load_trained_rejects_what_it_cannot_read(tiny_sd, tmp_path):
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    with pytest.raises(PrefoptError, match="neither a diffusers pipeline"):
        backbone.load_trained(str(tmp_path))
    with pytest.raises(PrefoptError, match="finetune.mode: full"):
        backbone.load_trained(str(tiny_sd))


def _assert_pipeline_unet_is_student(unet, backbone):
    shape = backbone.data_signature()["data_shape"]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    cond = backbone.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        expected = backbone.predict(x, t, cond, "student")
        got = unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
    assert not torch.allclose(expected, backbone.predict(x, t, cond, "reference"))
    assert torch.allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------- extra policies (DD-CPP)


@pytest.fixture(scope="module")
def two_policies(tiny_sd, tmp_path_factory):
    """Two saved LoRAs that differ: trained with different objectives."""
    paths = {}
    for name, objective_name in (("policy_w", "diffusion_dpo"), ("policy_l", "diffusion_kto")):
        backbone = load_backbone(SDBackbone, tiny_sd, "lora", finetune={"rank": 4})
        train_steps(backbone, objective(objective_name), 3)
        paths[name] = str(tmp_path_factory.mktemp(name))
        backbone.save(paths[name])
        paths[name + "/probe"] = probe(backbone, "student")
    return paths


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_policies_are_extra_frozen_adapters(tiny_sd, two_policies, mode):
    policies = {name: two_policies[name] for name in ("policy_w", "policy_l")}
    backbone = load_backbone(SDBackbone, tiny_sd, mode, policies=policies)
    reference = probe(backbone, "reference")
    for name in policies:
        assert torch.allclose(probe(backbone, name), two_policies[name + "/probe"], atol=1e-6)
        assert not torch.allclose(probe(backbone, name), reference)
    assert torch.equal(probe(backbone, "student"), reference)  # the policies do not leak into the student
    trained = [n for n, p in backbone.trainable_module().named_parameters() if p.requires_grad]
    assert not any("policy" in n for n in trained)
    with pytest.raises(PrefoptError, match="no prediction source"):
        probe(backbone, "policy_x")

    ddspo = objective("ddspo", winner_policy=policies["policy_w"], loser_policy=policies["policy_l"])
    assert set(ddspo.policies()) == set(policies)
    steps = 2 if mode == "lora" else 1
    losses = train_steps(backbone, ddspo, steps)
    assert all(np.isfinite(losses))
    for name in policies:
        assert torch.allclose(probe(backbone, name), two_policies[name + "/probe"], atol=1e-6)
    assert torch.equal(probe(backbone, "reference"), reference)
    assert not torch.equal(probe(backbone, "student"), reference)


def test_policy_names_are_checked(tiny_sd, two_policies):
    with pytest.raises(PrefoptError, match="reserved"):
        load_backbone(SDBackbone, tiny_sd, policies={"reference": two_policies["policy_w"]})
    with pytest.raises(PrefoptError, match="cannot load LoRA 'policy_w'"):
        load_backbone(SDBackbone, tiny_sd, policies={"policy_w": "/nonexistent/lora"})


def test_sampling_only_load_serves_policies(tiny_sd, two_policies):
    """Runtime.train false: no adapter, no copy; a saved LoRA can still be sampled as a policy."""
    backbone = load_backbone(SDBackbone, tiny_sd, train=False, policies={"trained": two_policies["policy_w"]})
    assert torch.allclose(probe(backbone, "trained"), two_policies["policy_w/probe"], atol=1e-6)
    assert torch.equal(probe(backbone, "student"), probe(backbone, "reference"))  # the policy stays off
    assert not torch.allclose(backbone.sample(PROMPTS[:1], [0], "trained"), backbone.sample(PROMPTS[:1], [0]))
    with pytest.raises(PrefoptError, match="sampling only"):
        backbone.trainable_module()


# ---------------------------------------------------------------------------- settings


def test_gradient_checkpointing_is_enabled(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, "full", gradient_checkpointing=True)
    assert backbone.trainable_module().is_gradient_checkpointing
    check_training_step(backbone, "diffusion_dpo")


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_half_precision_runtime(tiny_sd, mode):
    """Frozen weights in the engine's bf16, trained weights in float32, a step under autocast."""
    from prefopt.engine.step import FusedStep
    from prefopt.interfaces import Runtime

    backbone = SDBackbone(SDBackbone.Config(pretrained=str(tiny_sd), finetune={"mode": mode}))
    backbone.load(Runtime(device=torch.device("cpu"), dtype=torch.bfloat16))
    backbone.set_trainable_module(backbone.trainable_module())
    assert backbone._get_reference_module().dtype == torch.bfloat16 and backbone.modules["text_encoder"].dtype == torch.bfloat16
    assert {p.dtype for p in backbone.trainable_parameters()} == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FusedStep(backbone, objective("ddspo"))(pair_batch(backbone), torch.Generator().manual_seed(0),
                                                      torch.device("cpu"))
    out.loss.backward()
    assert np.isfinite(float(out.loss.detach()))
    assert all(p.grad is not None for p in backbone.trainable_parameters())


def test_xformers_needs_a_gpu_and_the_package(tiny_sd):
    from prefopt_backbones import loading

    with pytest.raises(PrefoptError, match="xformers needs a CUDA GPU"):
        load_backbone(SDBackbone, tiny_sd, attention="xformers")
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="prefopt\\[xformers\\]"):
            loading.set_attention(torch.nn.Linear(1, 1), "xformers", torch.device("cuda"))


def test_vae_from_another_repo(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, vae_pretrained=str(tiny_sd / "vae"))
    assert backbone.describe()["components"]["vae"] == f"AutoencoderKL from {tiny_sd / 'vae'}"
    assert backbone.data_signature()["latent_scaling_factor"] == 0.18215


def test_unknown_target_modules_are_a_one_line_error(tiny_sd):
    with pytest.raises(PrefoptError, match="target_modules"):
        load_backbone(SDBackbone, tiny_sd, finetune={"target_modules": ["no_such_layer"]})


def test_missing_weights_are_a_one_line_error(tmp_path):
    with pytest.raises(PrefoptError, match="cannot read"):
        SDBackbone(SDBackbone.Config(pretrained=str(tmp_path / "nothing"))).load(cpu_runtime())


def test_config_rejects_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SDBackbone.Config(finetune={"mode": "qlora"})
    with pytest.raises(ValidationError):
        SDBackbone.Config(finetune={"rank": 0})
    with pytest.raises(ValidationError):
        SDBackbone.Config(prediction_type="sample")
    with pytest.raises(ValidationError):
        SDBackbone.Config(unknown_key=1)


def test_describe_and_import_need_no_torch():
    """describe() reads only the Config; the plugin module imports no torch/diffusers."""
    code = (
        "import sys\n"
        "from prefopt_backbones.sd import SDBackbone\n"
        "from prefopt_backbones.sdxl import SDXLBackbone\n"
        "from prefopt_backbones.sana import SanaBackbone\n"
        "d = SDBackbone(SDBackbone.Config(pretrained='no/such-repo', finetune={'rank': 4})).describe()\n"
        "assert d['trained'] == {'mode': 'lora', 'rank': 4, 'alpha': 4,"
        " 'target_modules': ['to_q', 'to_k', 'to_v', 'to_out.0'], 'init': 'gaussian'}, d\n"
        "assert d['components']['unet'] == 'UNet2DConditionModel from no/such-repo/unet', d\n"
        "assert 'adapters disabled' in d['reference']\n"
        "f = SDBackbone(SDBackbone.Config(finetune={'mode': 'full'}, vae=False)).describe()\n"
        "assert f['components']['vae'] is None and 'frozen copy' in f['reference'], f\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
