"""Hostile evaluator inputs refused up front, in one line naming the file: FID reference statistics and the
digit world's GenEval metadata (the prompt-set and GenEval-rule cases live beside their modules' tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import cli, one_error

from prefopt.errors import DataError
from prefopt_digits.evaluator import PROMPT_SETS, DigitsGenEval
from prefopt_evaluators.fid import INCEPTION_DIM, Fid, read_statistics

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ FID reference statistics


def clip_fid(statistics) -> Fid:
    return Fid(Fid.Config(features=["clip"], prompts=["a red car"], reference_statistics={"clip": str(statistics)}))


def savez(path, **arrays):
    with open(path, "wb") as handle:  # np.savez would add .npz to a name without it
        np.savez(handle, **arrays)
    return path


def good(d=4):
    return {"mu": np.zeros(d), "sigma": np.eye(d)}


def test_well_formed_statistics_pass_the_check(tmp_path):
    path = savez(tmp_path / "ref.npz", **good())
    clip_fid(path).check()
    mu, sigma = read_statistics(path, "clip")
    assert mu.shape == (4,) and sigma.shape == (4, 4)


def truncated(tmp_path):
    whole = savez(tmp_path / "whole.npz", **good()).read_bytes()
    (tmp_path / "ref.npz").write_bytes(whole[: len(whole) // 2])


def npy(tmp_path):
    with open(tmp_path / "ref.npz", "wb") as handle:
        np.save(handle, np.zeros(4))


@pytest.mark.parametrize("write, message", [
    (truncated, "is not readable FID statistics (File is not a zip file)"),
    (lambda d: (d / "ref.npz").write_text("mu sigma\n"), "is not readable FID statistics (This file contains pickled"),
    (lambda d: (d / "ref.npz").write_bytes(b""), "is not readable FID statistics"),
    (npy, "holds no 'mu' and 'sigma' arrays"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros(4)), "holds no 'mu' and 'sigma' arrays"),
    (lambda d: savez(d / "ref.npz", mu=np.array(["a", "b"]), sigma=np.eye(2)), "mu is <U1"),
    (lambda d: savez(d / "ref.npz", mu=np.array([1, "a"], dtype=object), sigma=np.eye(2)),
     "Object arrays cannot be loaded when allow_pickle=False"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros(4, int), sigma=np.eye(4)), "mu is int64"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros(4), sigma=np.eye(3)), "mu has shape (4,) and sigma (3, 3)"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros((2, 2)), sigma=np.eye(4)), "mu has shape (2, 2)"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros(0), sigma=np.zeros((0, 0))), "mu has shape (0,)"),
    (lambda d: savez(d / "ref.npz", mu=np.full(4, np.nan), sigma=np.eye(4)), "NaN or infinite"),
    (lambda d: savez(d / "ref.npz", mu=np.zeros(4), sigma=np.diag([1.0, np.inf, 1.0, 1.0])), "NaN or infinite"),
])
def test_bad_statistics_are_refused_by_the_check(tmp_path, write, message):
    write(tmp_path)
    path = tmp_path / "ref.npz"
    with pytest.raises(DataError) as info:
        clip_fid(path).check()
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert message in str(info.value)


def test_inception_statistics_must_be_of_its_2048_features(tmp_path):
    path = savez(tmp_path / "coco.npz", **good())
    evaluator = Fid(Fid.Config(prompts=["a red car"], reference_statistics={"inception": str(path)}))
    with pytest.raises(DataError, match=f"{path}: statistics of dimension 4, but Inception features have 2048"):
        evaluator.check()
    savez(path, **good(INCEPTION_DIM))
    evaluator.check()


# ------------------------------------------------------------------ digits_geneval metadata


def digits_metadata(tmp_path, rows):
    path = tmp_path / "digits.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("clause, message", [
    ({"class": "seven", "count": 1}, "the digit detector has no class 'seven'; the classes are the digits 0, 1"),
    ({"class": "7", "count": 1, "color": "orange"}, "the digit world has no colour 'orange'"),
])
def test_digits_geneval_refuses_what_its_detector_cannot_report(tmp_path, clause, message):
    path = digits_metadata(tmp_path, [{"tag": "single_object", "include": [{"class": "4", "count": 1}],
                                       "prompt": "a photo of a 4"},
                                      {"tag": "colors", "include": [clause], "prompt": "a photo of it"}])
    with pytest.raises(DataError, match=f"{path}: {message}"):
        DigitsGenEval(DigitsGenEval.Config(metadata=str(path))).check()


def test_digits_geneval_refuses_an_excluded_class_it_cannot_find(tmp_path):
    path = digits_metadata(tmp_path, [{"tag": "counting", "include": [{"class": "3", "count": 2}],
                                       "exclude": [{"class": "three", "count": 3}], "prompt": "a photo of two 3s"}])
    with pytest.raises(DataError, match="no class 'three'"):
        DigitsGenEval(DigitsGenEval.Config(metadata=str(path))).check()


def test_the_shipped_digit_prompt_sets_pass_the_check():
    for name in ("eval.jsonl", "train.jsonl"):
        DigitsGenEval(DigitsGenEval.Config(metadata=str(PROMPT_SETS / name))).check()


# ------------------------------------------------------------------ through the CLI, before any training


@pytest.mark.parametrize("evaluator, message", [
    ("digits_geneval", "no class 'seven'"),
    ("fid", "is not readable FID statistics"),
])
def test_run_refuses_bad_evaluator_inputs_before_it_starts(tmp_path, evaluator, message):
    metadata = digits_metadata(tmp_path, [{"tag": "single_object", "include": [{"class": "seven", "count": 1}],
                                           "prompt": "a photo of a seven"}])
    statistics = tmp_path / "coco.npz"
    statistics.write_bytes(b"PK\x03\x04 cut short")
    entry = ({"name": "digits_geneval", "metadata": str(metadata)} if evaluator == "digits_geneval" else
             {"name": "fid", "features": ["clip"], "prompts": ["a photo of a 7"],
              "reference_statistics": {"clip": str(statistics)}})
    recipe = yaml.safe_load((REPO / "recipes" / "digits_ddspo.yaml").read_text())
    recipe.update(output_dir=str(tmp_path / "run"), eval=[entry])
    recipe["backbone"]["pretrained"] = str(REPO / "plugins" / "prefopt_digits" / "reference")
    recipe["pairs"]["prompts"]["path"] = str(PROMPT_SETS / "train.jsonl")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one_error(*cli("run", path), f"eval.0 ({evaluator}):", message)
    assert not (tmp_path / "run").exists()
