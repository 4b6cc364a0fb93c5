"""Crash-safe runs: a killed, stopped or resumed run ends with the weights of an uninterrupted one.

Every interrupted run here is a real ``prefopt run`` subprocess killed with a
real signal. The subprocess starts through ``BOOT`` below, which only slows the
training steps down (a sleep, so a kill lands mid-training instead of after the
run is over) or parks the process inside a checkpoint save so a SIGKILL lands
there deterministically. Neither changes what is computed, and production code
has no test hooks. Resumes run in-process through ``prefopt.cli.main`` (the
same code path, without paying the interpreter start-up again).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (FINAL, SLOW_PREFERENCE_STEPS, assert_checkpoint_whole, assert_same_weights, checkpoints, cli,
                     error_lines, metric_rows, write_toy_recipe)

# Started as `python -c BOOT run RECIPE ...`: optional slow-down / park, then the real CLI.
BOOT = r"""
import os, sys, time
""" + SLOW_PREFERENCE_STEPS + r"""
hang = os.environ.get("TEST_HANG_IN")
if hang:  # park inside the save of one checkpoint so that a SIGKILL lands there
    where = os.environ["TEST_HANG_TMP"]
    def park():
        open(os.environ["TEST_MARKER"], "w").close()
        time.sleep(600)
    if hang == "fsync":  # every file written into .tmp-step-N, not yet renamed to step-N
        import prefopt.atomic as atomic
        fsync = atomic.fsync_tree
        def fsync_then_park(directory):
            fsync(directory)
            if directory.name == where:
                park()
        atomic.fsync_tree = fsync_then_park
    elif hang == "torch_save":  # model written, optimizer state written, the rest not yet
        import torch
        save = torch.save
        def save_then_park(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if where in str(f):
                park()
        torch.save = save_then_park
sys.argv = ["prefopt"] + sys.argv[1:]
from prefopt.cli import main
main()
"""


def assert_metrics_once(run_dir: Path, reference: Path, steps: int = 40) -> None:
    """Each step logged exactly once, with the same loss as the uninterrupted run."""
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    expected = {r["step"]: r["loss"] for r in metric_rows(reference)}
    assert {r["step"]: r["loss"] for r in rows} == expected


class Child:
    """A ``prefopt run`` subprocess with its output in files (a pipe could fill and block it)."""

    def __init__(self, recipe: Path, *args: str, log_dir: Path, **env: str):
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "PREFOPT_DISABLE_PLUGIN_AUTOLOAD": "1", **env}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = log_dir / "stdout.txt", log_dir / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", BOOT, "run", str(recipe), *args],
                                         env=full_env, stdout=out, stderr=err)

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, condition, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"prefopt exited ({self.proc.returncode}) before {what}:\n{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """Run A: the tiny toy recipe start to finish, never interrupted."""
    base = tmp_path_factory.mktemp("uninterrupted")
    code, err = cli("run", write_toy_recipe(base))
    assert code == 0, err
    return base / "run"


@pytest.fixture(scope="module")
def checkpoint_files(uninterrupted) -> set[str]:
    return {p.name for p in checkpoints(uninterrupted)[-1].iterdir()} - {"integrity.json"}


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run (its reference and pairs are reused: only training reruns)."""
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return write_toy_recipe(tmp_path, target)


# ----------------------------------------------------------------------------------- kill -9


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, uninterrupted, checkpoint_files):
    recipe = write_toy_recipe(tmp_path)
    run_dir = tmp_path / "run"
    child = Child(recipe, log_dir=tmp_path / "logs", TEST_STEP_DELAY="0.03")
    child.wait_for(lambda: checkpoints(run_dir), "the first checkpoint")
    time.sleep(random.uniform(0.0, 0.5))  # an arbitrary moment of the remaining training
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert not (run_dir / FINAL).exists()

    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)
    for path in checkpoints(run_dir):
        assert_checkpoint_whole(path, checkpoint_files)
    assert not list((run_dir / "checkpoints").glob(".*"))


@pytest.mark.parametrize("hang_in", ["torch_save", "fsync"])
def test_kill_9_while_saving_a_checkpoint(tmp_path, uninterrupted, checkpoint_files, hang_in):
    """SIGKILL inside the save of step 20: half-written (torch_save) or written but not renamed (fsync).

    step-10 stays whole, no step-20 appears, and --resume from step-10 gives the weights of A.
    """
    recipe = write_toy_recipe(tmp_path)
    run_dir = tmp_path / "run"
    marker = tmp_path / "parked"
    child = Child(recipe, log_dir=tmp_path / "logs", TEST_HANG_IN=hang_in,
                  TEST_HANG_TMP=".tmp-step-00000020", TEST_MARKER=str(marker))
    child.wait_for(marker.exists, "the save of step 20")
    child.kill()
    assert child.wait() == -signal.SIGKILL

    assert [p.name for p in checkpoints(run_dir)] == ["step-00000010"]
    assert_checkpoint_whole(run_dir / "checkpoints" / "step-00000010", checkpoint_files)
    partial = run_dir / "checkpoints" / ".tmp-step-00000020"
    assert partial.is_dir()  # never counted as a checkpoint, whole or not
    if hang_in == "torch_save":
        assert not (partial / "trainer_state.json").exists()

    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)
    assert not list((run_dir / "checkpoints").glob(".*")), "a stale temporary checkpoint was left behind"


@pytest.mark.slow  # three interpreter start-ups; the deterministic test above covers the default run
def test_repeated_kill_9_with_a_checkpoint_every_step(tmp_path, uninterrupted, checkpoint_files):
    """SIGKILL at random moments while a checkpoint is written (and an old one pruned) after every step.

    Saving is most of each step here, so several kills land while a checkpoint
    is being written, renamed or pruned. After each kill every ``step-*``
    directory that exists must be whole (the temporary ``.tmp-step-*`` ones are
    not checkpoints), and the run that is finally resumed ends with A's weights.
    """
    recipe = write_toy_recipe(tmp_path)
    run_dir = tmp_path / "run"
    rng = random.Random(os.environ.get("PREFOPT_TEST_SEED", time.time_ns()))
    resume: tuple[str, ...] = ()
    for kill in range(3):
        child = Child(recipe, *resume, "train.checkpoint_every=1", log_dir=tmp_path / f"logs{kill}",
                      TEST_STEP_DELAY="0.01")
        # Wait for progress past what is there already, then kill at a random moment.
        done = len(checkpoints(run_dir)) and int(checkpoints(run_dir)[-1].name[5:])
        child.wait_for(lambda: checkpoints(run_dir) and int(checkpoints(run_dir)[-1].name[5:]) > done,
                       "a new checkpoint")
        time.sleep(rng.uniform(0.0, 0.12))
        child.kill()
        child.wait()
        assert not (run_dir / FINAL).exists(), "the run finished before the kill: slow it down"
        for path in checkpoints(run_dir):
            assert_checkpoint_whole(path, checkpoint_files)
        assert len(checkpoints(run_dir)) <= 2  # keep_checkpoints
        resume = ("--resume",)

    code, err = cli("run", recipe, "--resume", "train.checkpoint_every=1")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)


# ----------------------------------------------------------------------------------- SIGTERM


def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, uninterrupted, checkpoint_files):
    recipe = write_toy_recipe(tmp_path)
    run_dir = tmp_path / "run"
    child = Child(recipe, log_dir=tmp_path / "logs", TEST_STEP_DELAY="0.05")
    child.wait_for(lambda: checkpoints(run_dir), "the first checkpoint")
    child.kill(signal.SIGTERM)
    assert child.wait() == 143
    errors = error_lines(child.stderr())
    assert len(errors) == 1, child.stderr()
    assert "Traceback" not in child.stderr()
    match = re.search(r"stopped by SIGTERM after step (\d+); checkpoint (\S+);.*--resume", errors[0])
    assert match, errors[0]
    step, named = int(match.group(1)), Path(match.group(2))
    assert 10 <= step < 40
    assert named == run_dir / "checkpoints" / f"step-{step:08d}"
    assert_checkpoint_whole(named, checkpoint_files)
    assert checkpoints(run_dir)[-1] == named
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, step + 1))

    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)


# ------------------------------------------------------------------------- resume: what and when


def test_resume_from_a_named_checkpoint(tmp_path, uninterrupted):
    recipe = copy_of(uninterrupted, tmp_path)
    run_dir = tmp_path / "run"
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000020", "step-00000030"]
    (run_dir / FINAL).unlink()

    code, err = cli("run", recipe, "--resume", "--checkpoint", "step-00000020")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)

    code, err = cli("run", recipe, "--resume", "--checkpoint", "step-00000007")
    assert code == 2
    assert error_lines(err) == [
        "error: --resume: no checkpoint 'step-00000007' (available: step-00000020, step-00000030)"]


def test_resume_refuses_a_recipe_that_changes_results(tmp_path, uninterrupted):
    recipe = copy_of(uninterrupted, tmp_path)
    run_dir = tmp_path / "run"
    before = (run_dir / "metrics.jsonl").read_text()

    code, err = cli("run", recipe, "--resume", "objective.beta=1000")
    assert code == 2
    [line] = error_lines(err)
    assert "objective.beta" in line and "2000" in line and "1000" in line
    assert (run_dir / "metrics.jsonl").read_text() == before

    code, err = cli("run", recipe, "--resume", "train.max_steps=50")
    assert code == 2 and "train.max_steps" in error_lines(err)[0]

    # Logging and checkpointing cadence change nothing that is computed.
    code, err = cli("run", recipe, "--resume", "train.log_every=5", "train.keep_checkpoints=1")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, 31)) + [35, 40]


def test_resume_without_a_run_is_one_clear_error(tmp_path):
    recipe = write_toy_recipe(tmp_path)
    code, err = cli("run", recipe, "--resume")
    assert code == 2
    assert error_lines(err) == [f"error: --resume: {tmp_path / 'run'} holds no run to resume "
                                "(no recipe.resolved.yaml)"]


def test_a_run_dir_is_not_overwritten_without_overwrite(tmp_path, uninterrupted):
    recipe = copy_of(uninterrupted, tmp_path)
    run_dir = tmp_path / "run"

    def snapshot():
        # The lock files record who last held the directory; nothing else may change.
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")
                if p.is_file() and not p.name.startswith(".prefopt.lock")}

    before = snapshot()
    code, err = cli("run", recipe)
    assert code == 2
    [line] = error_lines(err)
    assert "--overwrite" in line and str(run_dir) in line
    assert snapshot() == before

    code, err = cli("run", recipe, "--overwrite")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert_metrics_once(run_dir, uninterrupted)
