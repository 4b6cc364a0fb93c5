"""DD-CPP end to end on the toy: train a winning and a losing policy, then DDSPO with their targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import metric_rows, tiny_toy_recipe

from prefopt.stages import run_recipe
from prefopt.recipe import resolve
from prefopt.registry import PluginRegistry


def run(data: dict, registry: PluginRegistry) -> list[dict]:
    run_recipe(resolve(data, registry), registry)
    return metric_rows(Path(data["output_dir"]))


def test_policies_trained_with_denoise_drive_ddspo(tmp_path):
    registry = PluginRegistry()
    short = {"max_steps": 20, "checkpoint_every": 0}
    for side in ("winner", "loser"):
        run(tiny_toy_recipe(tmp_path / side, objective={"name": "denoise", "side": side, "beta": None}, train=short), registry)

    metrics = run(tiny_toy_recipe(tmp_path / "ddcpp", objective={
        "name": "ddspo", "beta": 2000,
        "winner_policy": str(tmp_path / "winner" / "final"),
        "loser_policy": str(tmp_path / "loser" / "final"),
    }, train={"max_steps": 3, "checkpoint_every": 0}), registry)

    assert (tmp_path / "ddcpp" / "final" / "denoiser").is_dir()
    first = metrics[0]
    # Eq. 6: the winner target is the winning policy's ε, not the reference's,
    # so the reference's winner term is no longer zero (it is in Eq. 7).
    assert first["mse/ref_w"] > 0
    assert first["mse/student_w"] == pytest.approx(first["mse/ref_w"], rel=1e-6)  # student == reference at step 0
    assert all(m["loss"] == m["loss"] for m in metrics)  # finite (not NaN)
