"""Random-weight diffusers pipelines for ``prefopt bench``, built in code (nothing downloaded).

``tiny_sd`` is the tiny SD pipeline the CPU rows of docs/performance.md use
(tests/tiny_models.py's, with a UNet of a chosen width). ``sd15``, ``sdxl``
and ``sana`` are the published model configs (UNet / transformer layouts as in
the hub repositories' config.json) with random weights, and text encoders of
the real widths, for the GPU rows (docs/scripts/bench/gpu.sh). Each writes a pipeline
directory with ``save_pretrained`` and a prompt file the recipes read.

    python docs/scripts/bench/models.py tiny_sd OUT_DIR [--width 128]
    python docs/scripts/bench/models.py {sd15,sdxl,sana} OUT_DIR [--tiny]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from tiny_models import WORDS, _clip_text_config, _clip_tokenizer, _vae_kl  # noqa: E402  (the tests' tiny parts)


def prompts_file(directory: Path, count: int = 256) -> Path:
    """``count`` prompts of 4-8 words of the tiny tokenizer's vocabulary (seeded)."""
    generator = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(count):
        length = int(torch.randint(4, 9, (1,), generator=generator))
        lines.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=generator)))
    path = directory / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_sd(directory: Path, width: int = 128) -> Path:
    """tests/tiny_models.py's SD pipeline (16 px, 8×8 latents) with UNet block widths (width/2, width)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(width // 2, width), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    pipeline = StableDiffusionPipeline(
        vae=_vae_kl(), text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    prompts_file(directory)
    return directory


def _real_clip_tokenizer():
    """The tiny vocabulary with CLIP's real length (77 tokens): the text encoders see real shapes."""
    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = 77
    return tokenizer


def _clip_l(vocab_size: int):
    """CLIP ViT-L/14's text tower (SD1.5's encoder, SDXL's first), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768, bos_token_id=0, eos_token_id=1, pad_token_id=1))


def _sd_vae(latent_channels: int = 4, sample_size: int = 512):
    """SD's AutoencoderKL layout (8× downsampling), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=sample_size,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2)


def sd15(directory: Path) -> Path:
    """runwayml/stable-diffusion-v1-5's UNet config (64×64 latents) and CLIP ViT-L/14 text tower, random."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = _real_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    pipeline = StableDiffusionPipeline(
        vae=_sd_vae(), text_encoder=_clip_l(49408), tokenizer=tokenizer, unet=unet, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    prompts_file(directory)
    return directory


def sdxl(directory: Path) -> Path:
    """stabilityai/stable-diffusion-xl-base-1.0's UNet config (128×128 latents), CLIP-L + OpenCLIP bigG, random."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32)
    big_g = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, projection_dim=1280, hidden_act="gelu", bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    pipeline = StableDiffusionXLPipeline(
        vae=_sd_vae(sample_size=1024), text_encoder=_clip_l(49408), text_encoder_2=big_g,
        tokenizer=_real_clip_tokenizer(), tokenizer_2=_real_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        add_watermarker=False)
    pipeline.save_pretrained(directory)
    prompts_file(directory)
    return directory


def sana(directory: Path) -> Path:
    """Efficient-Large-Model/Sana_600M_1024px's transformer config (32×32 latents of 32 channels), random.

    The text encoder has Gemma-2-2B's width (2304, what the transformer sees) but 2 of its 26 layers,
    and the DC-AE its real downsampling (32×) and latent channels with small widths: training reads
    latents, and these only set shapes here.
    """
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    from tiny_models import _gemma_tokenizer

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=36, attention_head_dim=32, num_layers=28,
        num_cross_attention_heads=16, cross_attention_head_dim=72, cross_attention_dim=1152, caption_channels=2304,
        mlp_ratio=2.5, sample_size=32, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6)
    gemma = Gemma2Model(Gemma2Config(
        vocab_size=256, hidden_size=2304, intermediate_size=9216, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, pad_token_id=0, eos_token_id=1,
        bos_token_id=2))
    blocks = 6  # 2^(6-1) = 32× downsampling
    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8,
        encoder_block_types=("ResBlock",) * blocks, decoder_block_types=("ResBlock",) * blocks,
        encoder_block_out_channels=(16,) * blocks, decoder_block_out_channels=(16,) * blocks,
        encoder_qkv_multiscales=((),) * blocks, decoder_qkv_multiscales=((),) * blocks,
        encoder_layers_per_block=(1,) * blocks, decoder_layers_per_block=(1,) * blocks,
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407)
    pipeline = SanaPipeline(tokenizer=_gemma_tokenizer(), text_encoder=gemma, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipeline.save_pretrained(directory)
    prompts_file(directory)
    return directory


def tiny(family: str, directory: Path) -> Path:
    """tests/tiny_models.py's pipelines (docs/scripts/bench/gpu.sh --tiny: the script end to end in a minute on a CPU)."""
    import tiny_models

    builder = {"sd15": lambda d: tiny_sd(d, width=16), "sdxl": tiny_models.build_sdxl,
               "sana": tiny_models.build_sana}[family]
    builder(directory)
    prompts_file(directory)
    return directory


BUILDERS = {"tiny_sd": tiny_sd, "sd15": sd15, "sdxl": sdxl, "sana": sana}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--width", type=int, default=128, help="tiny_sd: the UNet's widest block")
    parser.add_argument("--tiny", action="store_true", help="sd15/sdxl/sana: the tests' tiny pipeline instead")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    if args.tiny and args.model != "tiny_sd":
        print(tiny(args.model, args.directory))
    else:
        kwargs = {"width": args.width} if args.model == "tiny_sd" else {}
        print(BUILDERS[args.model](args.directory, **kwargs))
