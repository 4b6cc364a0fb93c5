"""Images in and out of the backbones' pixel space (RGB in [-1, 1], channels first)."""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from prefopt.errors import DataError


def open_image(item: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, encoded bytes, a path, a {bytes: ...} dict or an HWC array."""
    if isinstance(item, dict) and item.get("bytes") is not None:  # datasets' Image feature
        item = item["bytes"]
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (bytes, bytearray)):
        image = Image.open(io.BytesIO(item))
    elif isinstance(item, (str, os.PathLike)):
        image = Image.open(item)
    elif isinstance(item, np.ndarray):
        image = Image.fromarray(_as_uint8(item))
    else:
        raise DataError(f"cannot read an image from a {type(item).__name__}")
    return image.convert("RGB")


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """HWC (or HW) array to uint8: floats are taken to be in [0, 1]."""
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then a centre crop: the official Diffusion-DPO and Diffusion-KTO
    preprocessing without its random flip, i.e. torchvision's ``Resize(size, BILINEAR)`` (the longer side
    truncated to ``int(size * long / short)``) and ``CenterCrop(size)`` (offsets rounded)."""
    width, height = image.size
    if width <= height:
        width, height = size, max(size, int(size * height / width))
    else:
        width, height = max(size, int(size * width / height)), size
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_pixels(items: Sequence[Any], size: int) -> torch.Tensor:
    """Images as a (N, 3, size, size) float tensor in [-1, 1]."""
    arrays = [np.asarray(_square(open_image(item), size), dtype=np.float32) for item in items]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return pixels / 127.5 - 1.0


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) pixels in [-1, 1] as PIL images."""
    arrays = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arrays.permute(0, 2, 3, 1).cpu().numpy()]
