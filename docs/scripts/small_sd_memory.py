"""Build the pipeline and recipes of the memory rows in docs/performance.md.

A random Stable Diffusion 1.x-shaped pipeline (no download): SD's VAE and the
CLIP ViT-L/14 text encoder's shapes (85 M text-encoder, 84 M VAE weights) and
a UNet of SD's layout at half its channels (220 M weights), saved with
``save_pretrained``; and two full fine-tuning recipes over it at 64 px with the
text cache on: DDSPO (needs the frozen reference) and ``denoise`` (needs none).

    python docs/scripts/small_sd_memory.py /tmp/mem
    prefopt pairs build /tmp/mem/ddspo.yaml
    /usr/bin/time -v prefopt run /tmp/mem/ddspo.yaml     # "Maximum resident set size"
    /usr/bin/time -v prefopt run /tmp/mem/denoise.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_models import _clip_tokenizer  # noqa: E402  (a tiny CLIP tokenizer; its vocabulary size is not measured)


def build(directory: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(160, 320, 640, 640), cross_attention_dim=768,
                                attention_head_dim=8)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(directory / "small-sd")


def recipes(directory: Path) -> None:
    (directory / "prompts.txt").write_text(
        "a photo of a cat\na red car on a road\na dog sitting under a tree\na cat on a red car\n")
    for name, objective in (("ddspo", {"name": "ddspo", "beta": 16000}), ("denoise", {"name": "denoise"})):
        recipe = {
            "seed": 0,
            "output_dir": str(directory / f"run-{name}"),
            "backbone": {"name": "sd", "pretrained": str(directory / "small-sd"), "finetune": {"mode": "full"},
                         "resolution": 64, "num_inference_steps": 1},
            "pairs": {"source": {"name": "random_removal", "variants": 1},
                      "prompts": {"path": str(directory / "prompts.txt"), "min_words": 2},
                      "dir": str(directory / "pairs"), "shard_size": 4},
            "objective": objective,
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-6, "text_cache": True, "checkpoint_every": 0,
                      "loader_workers": 0},
        }
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    recipes(out)
