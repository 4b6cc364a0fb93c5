"""compare's report reads its runs' <prefix>_results.jsonl back: damage is one line, images stay inside the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prefopt.compare_figures import _sample_grid, read_results
from prefopt.errors import DataError


def _record(**changes) -> dict:
    return {"model": "student", "prompt": "a red cat", "seed": 3, "image": "images/0.png",
            "scores": {"score": 0.5}, **changes}


def _results(tmp_path, *records, text: str | None = None):
    path = tmp_path / "run" / "clip_results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("text, words", [
    ('{"model": "student", "prompt": "a red cat", "scor', "not valid JSON"),
    (json.dumps(_record(model=None)) + "\n", "is damaged"),
    (json.dumps(_record(scores={"score": "high"})) + "\n", "is damaged"),
    (json.dumps(_record(scores=[0.5])) + "\n", "is damaged"),
    (json.dumps(_record(group=["a", "b"])) + "\n", "is damaged"),
])
def test_a_damaged_results_record_is_one_error_naming_its_line(tmp_path, text, words):
    path = _results(tmp_path, text=text)
    with pytest.raises(DataError, match=words) as info:
        read_results(path)
    assert f"{path}:1" in str(info.value) and "\n" not in str(info.value)


def test_an_image_path_leading_out_of_the_run_is_never_drawn(tmp_path):
    outside = tmp_path / "private.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    path = _results(tmp_path, _record(image=str(outside)), _record(prompt="a dog", image="../private.png"))
    records = read_results(path)
    assert [r["image"] for r in records] == [None, None]
    assert _sample_grid([("ddspo", records, "student")]) == ({}, [])


def test_a_run_whose_image_is_not_an_image_is_left_out_of_the_grid(tmp_path):
    path = _results(tmp_path, _record())
    (path.parent / "images").mkdir()
    (path.parent / "images" / "0.png").write_text("not a png")
    assert _sample_grid([("ddspo", read_results(path), "student")]) == ({}, [])
