"""The learning-rate schedule steps once per optimizer step, whatever the number of processes.

accelerate steps a prepared scheduler once per process on every optimizer step
unless told otherwise; on two processes a warmup then lasts half its steps,
``linear`` reaches 0 halfway and diffusers' ``cosine`` climbs back after it.
Here one real ``accelerate launch`` of two workers (gloo on the CPU) runs
three tiny toy recipes, one per schedule with warmup (one with gradient
accumulation), and every logged ``lr`` must equal the one-process run's.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from helpers import ENV, cli, metric_rows, two_process_launch, write_toy_recipe

STEPS, WARMUP, LR = 8, 3, 1.0e-3
SCHEDULES = {
    "constant": {"lr_scheduler": "constant", "warmup_steps": WARMUP},
    "linear": {"lr_scheduler": "linear", "warmup_steps": WARMUP, "grad_accum": 2, "batch_size": 4},
    "cosine": {"lr_scheduler": "cosine", "warmup_steps": WARMUP},
}

# Started by `accelerate launch ... runs.py RECIPE...` in each worker: `prefopt run` of each recipe in turn.
RUNS = r"""
import sys
from prefopt.cli import main
for recipe in sys.argv[1:]:
    sys.argv = ["prefopt", "run", recipe]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
"""


def write_recipes(directory: Path) -> dict[str, Path]:
    return {name: write_toy_recipe(directory, output_dir=directory / name, name=f"{name}.yaml", pretrain=False,
                                   train={"max_steps": STEPS, "lr": LR, "checkpoint_every": 0, **train})
            for name, train in SCHEDULES.items()}


def expected_lr(name: str, step: int) -> float:
    """diffusers' schedules after ``step`` optimizer steps (the lr the next step uses)."""
    if step < WARMUP:
        return LR * step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return LR * {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[name]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("one")
    for name, recipe in write_recipes(base).items():
        code, err = cli("run", recipe)
        assert code == 0, err
    return {name: base / name for name in SCHEDULES}


def test_two_processes_log_the_one_process_lr_at_every_step(tmp_path, one_process):
    recipes = write_recipes(tmp_path)
    runs = tmp_path / "runs.py"
    runs.write_text(RUNS)
    done = subprocess.run(two_process_launch(str(runs), *map(str, recipes.values())), env=ENV,
                          capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 0, "\n".join(errors) + done.stderr[-3000:]
    for name in SCHEDULES:
        one = [(r["step"], r["lr"]) for r in metric_rows(one_process[name])]
        two = [(r["step"], r["lr"]) for r in metric_rows(tmp_path / name)]
        assert [s for s, _ in two] == list(range(1, STEPS + 1)), name
        assert two == one, name
        # And the schedule is the one asked for: warmup over WARMUP steps, then the decay to step STEPS.
        assert [lr for _, lr in one] == pytest.approx([expected_lr(name, s) for s in range(1, STEPS + 1)],
                                                      rel=1e-9, abs=1e-15), name
