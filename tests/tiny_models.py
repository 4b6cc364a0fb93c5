"""Tiny random pipelines of the real diffusers / transformers classes, saved to disk offline.

Each builder writes a complete diffusers pipeline directory (``save_pretrained``)
that a backbone then loads through its ordinary loading path with
``pretrained=<that directory>``. Tokenizers are built from an in-code vocabulary,
so nothing is downloaded. Fixtures are session-scoped: each pipeline is built
once per test run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

WORDS = (
    "a photo of cat dog red blue green the on an and with in big small tree house car "
    "painting sitting next to under sky"
).split()
CLIP_MAX_LENGTH = 16
SD_RESOLUTION = 16  # pixels; the tiny VAE downsamples by 2
SANA_RESOLUTION = 32  # SanaPipeline wants a multiple of 32


def _clip_tokenizer():
    """A CLIP BPE tokenizer whose merges spell out every word in WORDS."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(set("".join(WORDS))):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _clip_text_config(vocab_size: int, hidden_size: int = 16, projection_dim: int = 8):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vae_kl(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=SD_RESOLUTION,
        **extra,
    )


def _unet(in_channels: int, sample_size: int, cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=4,
        **extra,
    )


def build_sd(directory: Path, prediction_type: str = "epsilon", pixel: bool = False) -> Path:
    """A tiny StableDiffusionPipeline (latent, or pixel-space without a VAE)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
    vae = None if pixel else _vae_kl()
    size = SD_RESOLUTION if pixel else SD_RESOLUTION // 2
    unet = _unet(in_channels=3 if pixel else 4, sample_size=size, cross_attention_dim=16)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


def build_sdxl(directory: Path) -> Path:
    """A tiny StableDiffusionXLPipeline: two CLIP encoders and text_time micro-conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer), hidden_size=16))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(len(tokenizer), hidden_size=16, projection_dim=8))
    time_embed_dim = 4
    unet = _unet(
        in_channels=4,
        sample_size=SD_RESOLUTION // 2,
        cross_attention_dim=32,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=8 + 6 * time_embed_dim,  # pooled text + six time ids
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipeline = StableDiffusionXLPipeline(
        vae=_vae_kl(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


def _gemma_tokenizer():
    """A character-level Gemma tokenizer (no merges needed)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for char in sorted(set("".join(WORDS))):
        vocab[char] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[])


def build_sana(directory: Path) -> Path:
    """A tiny SanaPipeline: SanaTransformer2DModel, Gemma2Model, AutoencoderDC, flow-matching scheduler."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(0)
    tokenizer = _gemma_tokenizer()
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=512,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=SANA_RESOLUTION // 2,
    )
    pipeline = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipeline.save_pretrained(directory)
    return directory


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer with one piece per word of WORDS and one per character."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -1.0) for word in WORDS] + [(char, -5.0) for char in sorted(set("".join(WORDS)))]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


# SD3's and FLUX's VAEs shift latents before scaling them (their real factors) and have no quant convs.
SD3_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5305, "use_quant_conv": False, "use_post_quant_conv": False}
FLUX_VAE = {"shift_factor": 0.1159, "scaling_factor": 0.3611, "use_quant_conv": False, "use_post_quant_conv": False}


def build_sd3(directory: Path) -> Path:
    """A tiny StableDiffusion3Pipeline: SD3Transformer2DModel, two CLIP encoders with projection, T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    tokenizer_3 = _t5_tokenizer()
    # Both CLIPs' states side by side (16 + 16) fill T5's width (32) exactly; pooled: 8 + 8.
    transformer = SD3Transformer2DModel(
        sample_size=SD_RESOLUTION // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        pooled_projection_dim=16, pos_embed_max_size=8,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3's and SD3.5's scheduler config
        vae=_vae_kl(**SD3_VAE),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(len(tokenizer), hidden_size=16, projection_dim=8)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(len(tokenizer), hidden_size=16, projection_dim=8)),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(tokenizer_3), d_model=32),
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(directory)
    return directory


FLUX_RESOLUTION = 16  # pixels; the tiny VAE downsamples by 2 and FLUX packs 2x2 latent patches


def build_flux(directory: Path, guidance_embeds: bool = True) -> Path:
    """A tiny FluxPipeline: FluxTransformer2DModel (guidance-distilled like FLUX.1-dev, or not like schnell), CLIP, T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    # FLUX.1-dev's scheduler config: resolution-dependent (dynamic) shifting.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=guidance_embeds)
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=_vae_kl(**FLUX_VAE),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer), hidden_size=16)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2), d_model=32),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------- checks shared by the backbone tests

PROMPTS = ["a photo of a cat", "a red car", "a dog sitting under a tree"]
NEGATIVES = ["a photo", "a car", "a dog sitting"]
LN2 = math.log(2.0)


def cpu_runtime(train: bool = True):
    from prefopt.interfaces import Runtime

    return Runtime(device=torch.device("cpu"), dtype=torch.float32, train=train)


def load_backbone(cls, pretrained: Path, mode: str = "lora", policies=None, train: bool = True, **settings):
    """A backbone loaded from a tiny pipeline directory on the CPU, as the engine would load it."""
    finetune = {"mode": mode, **settings.pop("finetune", {})}
    config = cls.Config(pretrained=str(pretrained), num_inference_steps=2, finetune=finetune, **settings)
    backbone = cls(config)
    backbone.load(cpu_runtime(train), policies)
    return backbone


def pair_batch(backbone, seed: int = 0):
    """Random x0 pairs in the backbone's data space with the shared prompts."""
    from prefopt.engine.step import PairBatch

    shape = backbone.data_signature()["data_shape"]
    generator = torch.Generator().manual_seed(seed)
    x0_w = torch.randn(len(PROMPTS), *shape, generator=generator)
    x0_l = torch.randn(len(PROMPTS), *shape, generator=generator)
    return PairBatch(x0_w, x0_l, list(PROMPTS), list(NEGATIVES))


def probe(backbone, source: str, seed: int = 1) -> torch.Tensor:
    """A prediction of ``source`` on fixed inputs (to compare before / after training)."""
    shape = backbone.data_signature()["data_shape"]
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, *shape, generator=generator)
    noise = torch.randn(2, *shape, generator=generator)
    t = backbone.sample_timesteps(2, generator)
    cond = backbone.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        return backbone.predict(backbone.add_noise(x0, noise, t), t, cond, source).clone()


def objective(name: str, **settings):
    from prefopt.registry import PluginRegistry

    cls = PluginRegistry().get("objective", name)
    return cls(cls.Config(**settings))


def train_steps(backbone, objective_, steps: int):
    """``steps`` optimizer steps of the fused step; returns the losses."""
    from prefopt.engine.step import FusedStep

    backbone.set_trainable_module(backbone.trainable_module())
    params = list(backbone.trainable_parameters())
    # No weight decay: a weight must change only if its gradient moved it.
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    fused = FusedStep(backbone, objective_)
    losses = []
    for step in range(steps):
        out = fused(pair_batch(backbone, seed=step), torch.Generator().manual_seed(step), torch.device("cpu"))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    return losses


def check_training_step(backbone, objective_name: str, outside_the_output: tuple[str, ...] = ()) -> None:
    """Finite loss, ln 2 at step 0 (DPO / DDSPO), every trained weight moves, reference untouched.

    LoRA's B starts at 0, so A's gradient is exactly 0 at the first step (the
    adapter's output does not depend on A yet); LoRA runs therefore take two
    steps, the first moving B and the second A. Nothing is re-initialised.
    Weights under the module names in ``outside_the_output`` feed nothing the
    model returns (SD3's last block drops its text stream), so they must stay.
    """
    named = {n: p for n, p in backbone.trainable_module().named_parameters() if p.requires_grad}
    assert named, "no trainable parameters"
    before = {n: p.detach().clone() for n, p in named.items()}
    reference = probe(backbone, "reference")
    steps = 2 if backbone.config.finetune.mode == "lora" else 1

    losses = train_steps(backbone, objective(objective_name), steps)

    assert all(math.isfinite(loss) for loss in losses), losses
    if objective_name in ("ddspo", "diffusion_dpo"):
        assert abs(losses[0] - LN2) < 1e-5, losses[0]
    unchanged = [n for n, p in named.items() if torch.equal(p.detach(), before[n])]
    dead = [n for n in named if n.startswith(outside_the_output)] if outside_the_output else []
    assert sorted(unchanged) == sorted(dead), f"of {len(named)} trained weights, these did not move: {unchanged[:5]}"
    assert torch.equal(probe(backbone, "reference"), reference), "the reference moved"
    assert not torch.equal(probe(backbone, "student"), reference), "the student did not move"


def check_fused_step_calls(backbone, monkeypatch) -> None:
    """One DDSPO step calls the denoiser twice: the reference once on 3·B rows without grad
    (ε_ref(x_t^w, c), ε_ref(x_t^l, c-), ε_ref(x_t^l, c)), the student once on 2·B rows with grad."""
    from prefopt.engine.step import FusedStep

    denoiser_class = type(backbone.trainable_module())
    calls = []
    forward = denoiser_class.forward

    def record(self, hidden_states, *args, **kwargs):
        calls.append((hidden_states.shape[0], torch.is_grad_enabled()))
        return forward(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(denoiser_class, "forward", record)
    backbone.set_trainable_module(backbone.trainable_module())
    batch = pair_batch(backbone)
    FusedStep(backbone, objective("ddspo"))(batch, torch.Generator().manual_seed(0), torch.device("cpu")).loss.backward()
    n = len(batch)
    assert sorted(calls) == [(2 * n, True), (3 * n, False)], calls


def check_reference_is_frozen(backbone) -> None:
    """A reference prediction records no graph, and leaves the student's weights trainable."""
    trainable = [p for p in backbone.trainable_module().parameters() if p.requires_grad]
    shape = backbone.data_signature()["data_shape"]
    x = torch.randn(2, *shape)
    t = backbone.sample_timesteps(2, torch.Generator().manual_seed(0))
    out = backbone.predict(x, t, backbone.encode_prompts(PROMPTS[:2]), "reference")
    assert not out.requires_grad
    assert [p for p in backbone.trainable_module().parameters() if p.requires_grad] == trainable


CLIP_IMAGE_SIZE = 32


def build_clip(directory: Path) -> Path:
    """A random CLIPModel and its CLIPProcessor, saved as a hub model would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=CLIP_IMAGE_SIZE, patch_size=8, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=8,
    ))
    # Random embeddings point anywhere, and a score clamps negative cosines to 0. A component
    # shared by every image and text embedding (the final norms' bias, carried by one row of each
    # projection) keeps every cosine positive, so that the scores still differ.
    with torch.no_grad():
        for norm, projection in ((model.vision_model.post_layernorm, model.visual_projection),
                                 (model.text_model.final_layer_norm, model.text_projection)):
            norm.bias.fill_(1.0)
            projection.weight[0] += 1.0
    model.save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                                         crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
