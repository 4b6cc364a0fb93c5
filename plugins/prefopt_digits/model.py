"""The digit world's text-to-image model before training: a pixel-space Stable Diffusion pipeline.

Real diffusers / transformers parts, small enough to train on a laptop CPU:
a ``UNet2DConditionModel`` on 16×16 RGB pixels (no VAE), a ``CLIPTextModel``
over a word-level tokenizer of the world's vocabulary (saved beside it as a
``PreTrainedTokenizerFast``), and a DDPM scheduler. The directory this writes
is what ``recipes/digits_pretrain.yaml`` starts from (``backbone.pretrained``,
``vae: false``); the ``sd`` backbone loads it through its ordinary path.

``python -m prefopt_digits.model OUT_DIR`` writes it.
"""

from __future__ import annotations

from pathlib import Path

from prefopt_digits.prompts import NUMBERS
from prefopt_digits.world import CANVAS, CLASSES, COLOURS, RELATIONS

SPECIAL = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
MAX_WORDS = 16  # tokens per prompt with [BOS] and [EOS]; the longest prompt has 10 words
TEXT_DIM = 64


def vocabulary() -> list[str]:
    words = ["a", "photo", "of", "and"]
    words += [w for rel in RELATIONS for w in rel.split() if w not in words]
    words += list(NUMBERS.values()) + list(COLOURS) + list(CLASSES) + [f"{d}s" for d in CLASSES]
    return list(SPECIAL) + words


def tokenizer():
    """A whitespace word-level tokenizer that wraps each prompt in [BOS] ... [EOS] and pads with [PAD]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
        model_max_length=MAX_WORDS,
    )


def build_untrained(directory: Path, seed: int = 0) -> Path:
    """Write a randomly initialised pipeline directory (StableDiffusionPipeline layout, no VAE)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    words = tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(words), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_WORDS, projection_dim=TEXT_DIM,
        bos_token_id=words.bos_token_id, eos_token_id=words.eos_token_id, pad_token_id=words.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=CANVAS, in_channels=3, out_channels=3,
        # Cross-attention only at 8x8 (and in the mid block): at 16x16 as well it doubled the
        # step time on the 2-core machine (docs/digits.md).
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="epsilon", clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=words, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the untrained digit-world pipeline directory.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_untrained(args.out_dir, args.seed)
    print(f"untrained digit-world pipeline in {args.out_dir}")


if __name__ == "__main__":
    main()
