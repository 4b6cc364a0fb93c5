"""Random-weight diffusers pipelines for ``prefopt bench``, built in code (nothing downloaded).

``tiny_sd`` is the tiny SD pipeline the CPU rows of docs/performance.md use
(tests/tiny_models.py's, with a UNet of a chosen width). ``sd15``, ``sdxl``
and ``sana`` are the published model configs (UNet / transformer layouts as in
the hub repositories' config.json) with random weights, and text encoders of
the real widths, for the GPU rows (bench/gpu.sh). Each writes a pipeline
directory with ``save_pretrained`` and a prompt file the recipes read.

    python bench/models.py tiny_sd OUT_DIR [--width 128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
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


BUILDERS = {"tiny_sd": tiny_sd}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"width": args.width} if args.model == "tiny_sd" else {}
    print(BUILDERS[args.model](args.directory, **kwargs))
