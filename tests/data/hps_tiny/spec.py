"""The tiny HPS v2 model's shapes, prompts and images, shared by make.py and tests/test_hps_open_clip.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

# HPS v2 is open_clip's ViT-H-14 (width 1280, 32 layers, head width 80, patch 14, text width 1024, 24
# layers, 16 heads, embed 1024); these are its shapes scaled down, with its GELU and 77-token context.
EMBED_DIM = 16
IMAGE_SIZE = 32
VISION_PATCH = 8
VISION_WIDTH = 32
VISION_HEAD_WIDTH = 16
VISION_LAYERS = 2
TEXT_WIDTH = 32  # 2 heads of 16
TEXT_LAYERS = 2
CONTEXT_LENGTH = 77
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, which ViT-H-14 laion2b and HPS v2 use
STD = (0.26862954, 0.26130258, 0.27577711)

PROMPTS = ["a photo of a cat", "a red car under a tree", "A painting of a dog, in the style of Monet!"]
WORDS = sorted({w.strip(",!").lower() for p in PROMPTS for w in p.split()} | {",", "!"})
IMAGE_FILES = ["square.png", "wide.png", "tall.png"]
IMAGE_SIZES = [(64, 64), (80, 48), (40, 72)]  # (width, height): SD's square outputs and both aspects


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Left-to-right merges of each word's letters (``</w>`` ends a word, as in CLIP's BPE).

    BPE applies merges by rank, so a word whose letters an earlier word's
    merge pairs first ("tree" after "red": t, re, e</w>) stays in pieces.
    """
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
    return merges


def make_images() -> list[Image.Image]:
    """Smooth random pictures (a coarse colour grid, bicubically enlarged), as photographs are smooth."""
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((6, 6, 3)) * 255).astype("uint8")).resize(size, Image.BICUBIC)
            for size in IMAGE_SIZES]


def images() -> list[Image.Image]:
    out = []
    for name in IMAGE_FILES:
        with Image.open(HERE / name) as image:
            out.append(image.convert("RGB"))
    return out
