"""Helpers shared by the CLI tests: ``prefopt`` run in this process, the tiny toy recipe they run,
and the checks they make of what a run wrote (weights, checkpoints, metrics, error lines).

(``fixtures.dists.run_cli`` is the other way: a fresh interpreter, for what only
a new process shows, such as which libraries the CLI imports.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import socket
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import prefopt.cli

# The final weights of a run (or of its reference stage), relative to its directory.
FINAL = Path("final", "denoiser", "diffusion_pytorch_model.safetensors")

# The environment of `prefopt` subprocesses: one thread, unbuffered output, no plugins autoloaded.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PREFOPT_DISABLE_PLUGIN_AUTOLOAD": "1"}


def cli_outputs(*args) -> tuple[int, str, str]:
    """``prefopt ARGS`` in this process: (exit code, stdout, stderr).

    Exceptions other than ``SystemExit`` propagate (a crash is the test's finding).
    """
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = ["prefopt", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            prefopt.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def cli(*args) -> tuple[int, str]:
    """``prefopt ARGS`` in this process: (exit code, stderr)."""
    code, _, err = cli_outputs(*args)
    return code, err


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(code: int, err: str, *fragments: str) -> str:
    """The one ``error:`` line of a command that failed as a user should see it (exit 2, no traceback)."""
    assert code == 2, err
    assert "Traceback" not in err
    [line] = error_lines(err)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_launch(*args: str) -> list[str]:
    """The command line of ``accelerate launch`` with two processes on this machine, running ``args``."""
    # On a machine without a GPU, `--cpu` alone would start one process (it needs mpirun for more);
    # torchrun-style processes (`--multi_gpu`) become a gloo group since prefopt asks for the CPU.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]


# ------------------------------------------------------------------- what a run wrote


def metric_rows(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoints/step-*`` directories, oldest first (temporary ``.tmp-step-*`` ones are not)."""
    root = run_dir / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def assert_checkpoint_whole(path: Path, files: set[str]) -> None:
    """The checkpoint holds exactly ``files`` (and its integrity record), names its own step,
    every file reads back, and every file matches the checksum recorded for it."""
    from prefopt.checksums import RECORD, verify

    assert {p.name for p in path.iterdir()} == files | {RECORD}, path
    state = json.loads((path / "trainer_state.json").read_text())
    assert path.name == f"step-{state['step']:08d}"
    load_file(str(path / "model.safetensors"))
    for name in files - {"model.safetensors", "trainer_state.json"}:
        torch.load(path / name, weights_only=False)
    verify(path, "checkpoint", "(test)", run_id=state["run_id"])


def assert_same_weights(a: Path, b: Path) -> None:
    """Two safetensors files hold the same tensors under the same names, bit for bit."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys(), f"{a} and {b} hold different tensors"
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def _merge(data: dict, changes: dict) -> None:
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = copy.deepcopy(value)


def tiny_toy_recipe(output_dir: Path, *, pretrain: bool = True, **changes) -> dict:
    """A toy2d recipe that runs in seconds: 8 conditions, 40 DDSPO steps of 8 pairs, a checkpoint every 10.

    With ``pretrain``, a 30-step pretraining stage first makes the reference.
    ``changes`` name sections; each is merged into its section key by key
    (nested mappings too), and ``None`` removes a key.
    """
    data = {
        "seed": 0,
        "output_dir": str(output_dir),
        "backbone": {"name": "toy2d", "num_conditions": 8, "hidden": 32, "layers": 2,
                     "num_train_timesteps": 100, "sample_steps": 10},
    }
    if pretrain:
        data["pretrain"] = {
            "pairs": {"source": {"name": "toy2d_points", "points_per_condition": 50}},
            "train": {"max_steps": 30, "batch_size": 64, "lr": 2.0e-3, "log_every": 10},
        }
    data.update({
        "pairs": {"source": {"name": "toy2d_neighbours", "num_conditions": 8, "pairs_per_condition": 2}},
        "objective": {"name": "ddspo", "beta": 2000},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 1.0e-3, "checkpoint_every": 10, "log_every": 1},
    })
    _merge(data, changes)
    return data


def write_toy_recipe(directory: Path, output_dir: Path | None = None, name: str = "recipe.yaml",
                     **recipe) -> Path:
    """``directory/name`` holding ``tiny_toy_recipe(output_dir or directory / "run", **recipe)``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    data = tiny_toy_recipe(output_dir or directory / "run", **recipe)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# Boot-script lines for subprocess tests (`os` and `time` imported before them): with
# TEST_STEP_DELAY=seconds, every preference step sleeps first, so that a signal or a
# kill lands mid-training; the pretraining stage keeps its speed. Nothing computed changes.
SLOW_PREFERENCE_STEPS = r"""
delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
if delay:  # slower preference steps (the pretraining stage keeps its speed)
    import prefopt.engine.step as step
    call = step.FusedStep.__call__
    def slow(self, *args, **kwargs):
        if self.objective.name != "denoise":
            time.sleep(delay)
        return call(self, *args, **kwargs)
    step.FusedStep.__call__ = slow
"""
