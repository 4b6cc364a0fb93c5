"""Each stage starts from a fresh accelerate state; the private reset it needs is looked up, not assumed."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, is_initialized

from prefopt.accelerate_setup import make_accelerator
from prefopt.errors import PrefoptError
from prefopt.recipe import TrainConfig


def test_stages_of_one_process_may_change_precision():
    make_accelerator(TrainConfig(mixed_precision="no"))
    assert make_accelerator(TrainConfig(mixed_precision="bf16")).mixed_precision == "bf16"


def test_without_the_private_reset_a_later_stage_fails_in_one_line(monkeypatch):
    make_accelerator(TrainConfig())
    assert is_initialized()
    monkeypatch.delattr(AcceleratorState, "_reset_state")
    with pytest.raises(PrefoptError, match="has no AcceleratorState._reset_state"):
        make_accelerator(TrainConfig(mixed_precision="bf16"))
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=False)
