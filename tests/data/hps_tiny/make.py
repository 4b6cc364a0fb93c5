"""Writes the tiny HPS v2 golden files of tests/test_hps_open_clip.py, with the real open_clip.

Not run by the tests: it needs open_clip_torch and torchvision, which do not
install beside the project's CPU torch. Run it in a venv that has them
(e.g. `pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0
transformers`) from the repository root:

    python tests/data/hps_tiny/make.py

It builds a small random open_clip ViT CLIP (the architecture of HPS v2's
ViT-H/14 at a small width: GELU, pre-LN blocks, class-token pooling, argmax
(end-of-text) text pooling), saves its weights the way HPS v2 ships them
(``{"state_dict": ...}`` in a torch file, half precision), and records
open_clip's outputs for fixed prompts and images:

* ``tokens``: open_clip's tokenizer (a BPE whose merges spell the prompts'
  words) on the prompts; ``vocab.json``/``merges.txt`` hold the same BPE in
  the layout transformers' CLIPTokenizer reads;
* ``pixels_open_clip``: open_clip's own eval transform (PIL bicubic resize,
  centre crop, OpenAI mean/std); ``pixels_hps``: HPS v2's eval transform
  (ToTensor first, then a bicubic resize of the float tensor, centre crop,
  the same normalisation), as in HPS v2's fork of open_clip;
* unit image and text embeddings of open_clip's ``encode_image`` /
  ``encode_text`` for each, and HPS's score (the cosine) for each
  (image, prompt) pair under both transforms.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision import transforms as T

from spec import (CONTEXT_LENGTH, EMBED_DIM, IMAGE_FILES, IMAGE_SIZE, MEAN, PROMPTS, STD, TEXT_LAYERS, TEXT_WIDTH,
                  VISION_HEAD_WIDTH, VISION_LAYERS, VISION_PATCH, VISION_WIDTH, WORDS, bpe_merges, images, make_images)

HERE = Path(__file__).resolve().parent


def main() -> None:
    merges = bpe_merges(WORDS)
    bpe_file = HERE / "bpe.txt.gz"
    with gzip.open(bpe_file, "wt", encoding="utf-8") as f:
        f.write("#version: tiny\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(str(bpe_file), context_length=CONTEXT_LENGTH)
    bpe_file.unlink()
    vocab_size = tokenizer.vocab_size
    # transformers' CLIPTokenizer files for the same BPE: its token names for the two special tokens.
    vocab = dict(tokenizer.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    (HERE / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (HERE / "merges.txt").write_text("#version: tiny\n" + "".join(f"{a} {b}\n" for a, b in merges))

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=VISION_LAYERS, width=VISION_WIDTH,
                                                 head_width=VISION_HEAD_WIDTH, patch_size=VISION_PATCH,
                                                 image_size=IMAGE_SIZE),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=CONTEXT_LENGTH, vocab_size=vocab_size,
                                             width=TEXT_WIDTH, heads=TEXT_WIDTH // 16, layers=TEXT_LAYERS),
        quick_gelu=False,  # ViT-H-14's config: nn.GELU
    )
    # open_clip initialises LayerNorms to the identity and projections tiny; spread them so that
    # a wrong mapping of any weight shows in the outputs.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name or name.startswith("ln_final"):
                param.add_(0.2 * torch.randn_like(param))
        model.logit_scale.fill_(np.log(1 / 0.07))
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, HERE / "HPS_tiny_compressed.pt")

    # Score the weights as HPS does: loaded into an fp32 model.
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    for name, picture in zip(IMAGE_FILES, make_images()):
        picture.save(HERE / name)
    pictures = images()
    open_clip_transform = open_clip.transform.image_transform(IMAGE_SIZE, is_train=False, mean=MEAN, std=STD)
    hps_transform = T.Compose([lambda im: im.convert("RGB"), T.ToTensor(),
                               T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC),
                               T.CenterCrop(IMAGE_SIZE), T.Normalize(MEAN, STD)])
    tokens = tokenizer(PROMPTS)
    out = {"tokens": tokens}
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
        out["text_features"] = text
        for name, transform in (("open_clip", open_clip_transform), ("hps", hps_transform)):
            pixels = torch.stack([transform(p) for p in pictures])
            image = F.normalize(model.encode_image(pixels), dim=-1)
            out[f"pixels_{name}"] = pixels
            out[f"image_features_{name}"] = image
            out[f"scores_{name}"] = image @ text.T  # HPS v2's score: the cosine of the two embeddings
    save_file({k: v.contiguous() for k, v in out.items()}, str(HERE / "golden.safetensors"),
              metadata={"open_clip": open_clip.__version__, "torch": torch.__version__,
                        "torchvision": torchvision.__version__})
    print("vocab", vocab_size, "checkpoint bytes", (HERE / "HPS_tiny_compressed.pt").stat().st_size)


if __name__ == "__main__":
    main()
