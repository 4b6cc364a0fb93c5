"""Pick-a-Pic images enter training as the official Diffusion-DPO / Diffusion-KTO scripts prepare them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prefopt_backbones.images import to_pixels


def _gradient(width: int, height: int) -> Image.Image:
    """An image whose every pixel differs from its neighbours, so any shift or resampling change shows."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([(x * 7 + y * 3) % 256, (x * 5 + y * 11) % 256, (x * y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


# torchvision's Resize(size) keeps the shorter side at `size` and truncates the longer one,
# int(size * long / short); CenterCrop rounds its offsets: int(round((side - size) / 2)).
@pytest.mark.parametrize(("width", "height", "size", "resized", "offset"), [
    (640, 480, 512, (682, 512), (85, 0)),    # 512 * 640 / 480 = 682.67: truncated, not rounded to 683
    (300, 500, 256, (256, 426), (0, 85)),    # 256 * 500 / 300 = 426.67; (426 - 256) / 2 = 85
    (601, 400, 64, (96, 64), (16, 0)),       # 64 * 601 / 400 = 96.16
])
def test_shorter_side_bilinear_then_centre_crop_as_torchvision(width, height, size, resized, offset):
    image = _gradient(width, height)
    expected = image.resize(resized, Image.Resampling.BILINEAR).crop(
        (offset[0], offset[1], offset[0] + size, offset[1] + size))
    pixels = to_pixels([image], size)
    assert pixels.shape == (1, 3, size, size)
    want = torch.from_numpy(np.asarray(expected, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    assert torch.equal(pixels[0], want)


def test_a_square_image_of_the_size_is_unchanged():
    image = _gradient(32, 32)
    pixels = to_pixels([image], 32)
    restored = ((pixels[0] + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(restored, np.asarray(image))
