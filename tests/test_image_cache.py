"""The evaluation image cache hands back only what it stored: a damaged image is drawn again, never scored."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prefopt.evaluation import EvalRow, ImageCache

ROW = EvalRow("a photo of a red cat", 7)
SAMPLING = {"num_inference_steps": 10}


def _image() -> Image.Image:
    """A digit-scene-like image: flat background, one bright block (compressed, most flips still decode)."""
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[4:12, 6:10] = 200
    return Image.fromarray(pixels)


def _flip_a_pixel_byte(path) -> None:
    """Flip one bit of the compressed image data such that the file still decodes, to other pixels."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    for offset, bit in ((offset, bit) for offset in range(start, len(data) - 12) for bit in range(8)):
        trial = bytearray(data)
        trial[offset] ^= 1 << bit
        path.write_bytes(bytes(trial))
        try:
            with Image.open(path) as image:
                image.load()
                if image.convert("RGB").tobytes() != _image().tobytes():
                    return  # decodes, to other pixels: what the cache used to score silently
        except Exception:  # noqa: BLE001 - this flip broke the stream; try the next byte
            pass
    pytest.fail("no single-bit flip left the PNG decodable")


def test_a_stored_image_comes_back_whole(tmp_path):
    cache = ImageCache(tmp_path)
    cache.put("base", SAMPLING, ROW, _image())
    assert cache.get("base", SAMPLING, ROW).tobytes() == _image().tobytes()


def test_an_image_with_a_flipped_byte_that_still_decodes_is_not_used(tmp_path):
    cache = ImageCache(tmp_path)
    cache.put("base", SAMPLING, ROW, _image())
    _flip_a_pixel_byte(cache.path("base", SAMPLING, ROW))
    assert cache.get("base", SAMPLING, ROW) is None


def test_another_rows_image_under_this_name_is_not_used(tmp_path):
    cache = ImageCache(tmp_path)
    cache.put("base", SAMPLING, EvalRow("a blue dog", 7), _image())
    cache.path("base", SAMPLING, EvalRow("a blue dog", 7)).rename(cache.path("base", SAMPLING, ROW))
    assert cache.get("base", SAMPLING, ROW) is None
