"""Scorers whose packages are extras: without the package, one error naming the extra."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from prefopt.errors import MissingDependencyError
from prefopt_evaluators.fid import Fid


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_names_the_extra(tmp_path):
    evaluator = Fid(Fid.Config(prompts=["a"], reference_images=str(tmp_path)))
    with pytest.raises(MissingDependencyError, match=r"prefopt\[fid\]"):
        evaluator.load_scorer(torch.device("cpu"))


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="image-reward is installed")
def test_image_reward_without_its_package_names_the_extra():
    from prefopt_evaluators.image_reward import ImageReward

    with pytest.raises(MissingDependencyError, match=r"prefopt\[imagereward\]"):
        ImageReward(ImageReward.Config(prompts=["a cat"])).load_scorer(torch.device("cpu"))
