"""Training over two processes (gloo on the CPU) through ``accelerate launch``.

Each run here is a real ``accelerate launch --multi_gpu --num_processes 2``
of ``prefopt run`` (pretraining the reference included) with Diffusion-KTO,
whose KL baseline is averaged across the processes. The workers start through
``BOOT`` below, which only records what each process does (its pid, the data
indices it reads, its KL estimates) and optionally slows the preference steps
down so that a signal lands mid-training; nothing it does changes what is
computed, and production code has no test hooks.

Run A goes 6 steps uninterrupted. Runs that are killed (SIGKILL to the
launcher and both workers) or stopped (SIGTERM to one worker only) and then
resumed over two processes must end with A's weights, bit for bit, and A's
metrics, each step logged once. SIGTERM to the launcher (what a scheduler
sends) must stop both workers after the same step with one whole checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prefopt.checksums import run_id_of
from prefopt.locking import is_lock_file

from helpers import (ENV, FINAL, SLOW_PREFERENCE_STEPS, assert_checkpoint_whole, assert_same_weights, checkpoints,
                     metric_rows, two_process_launch, write_toy_recipe)

# Started by `accelerate launch ... boot.py run RECIPE ...` in every worker.
BOOT = r"""
import json, os, sys, time
rank = int(os.environ.get("RANK", "0"))
record = os.environ["TEST_RECORD_DIR"]
tmp = os.path.join(record, f".pid-{rank}")
with open(tmp, "w") as handle:
    handle.write(str(os.getpid()))
os.replace(tmp, os.path.join(record, f"pid-{rank}"))  # whole or absent

log = open(os.path.join(record, f"events-{rank}.jsonl"), "a", buffering=1)
current = {}
import prefopt.engine.trainer as trainer
accumulate = trainer.Trainer.accumulate
def recording_accumulate(self, step):
    current.update(stage=self.objective.name, step=step)
    log.write(json.dumps({"event": "step", **current}) + "\n")
    return accumulate(self, step)
trainer.Trainer.accumulate = recording_accumulate
take = trainer.EpochSampler.take
def recording_take(self, position, count):
    indices = take(self, position, count)
    # The loader takes the indices of later steps ahead of time: the step is the one the position
    # belongs to (grad_accum is 1 here), not the one being trained when the take happens.
    step = position // (count * int(os.environ.get("WORLD_SIZE", "1")))
    log.write(json.dumps({"event": "take", **current, "step": step, "size": self.size, "indices": indices}) + "\n")
    return indices
trainer.EpochSampler.take = recording_take
import prefopt_objectives.losses as losses
baseline = losses.kto_kl_baseline
def recording_baseline(g, reduce_mean):
    kl = baseline(g, reduce_mean)
    event = {"event": "kl", **current, "local": g.detach().mean().item(), "kl": kl.item()}
    log.write(json.dumps(event) + "\n")
    return kl
losses.kto_kl_baseline = recording_baseline

""" + SLOW_PREFERENCE_STEPS + r"""
sys.argv = ["prefopt"] + sys.argv[1:]
from prefopt.cli import main
code = "crashed"
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
    raise
finally:  # how the worker ended, unless a signal ended it
    with open(os.path.join(record, f"exit-{rank}"), "w") as handle:
        handle.write(str(code))
"""

STEPS = 6
CHECKPOINT_FILES = {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                    "random_states_1.pkl", "trainer_state.json"}


def write_recipe(directory: Path) -> Path:
    # 16 pairs, 8 per process and step: each step reads the whole dataset once.
    return write_toy_recipe(directory, objective={"name": "diffusion_kto", "beta": 2000},
                            train={"max_steps": STEPS, "checkpoint_every": 3})


class Launch:
    """``accelerate launch`` of two workers running ``prefopt run``; output in files (a pipe could fill)."""

    def __init__(self, tmp_path: Path, name: str, recipe: Path, *args: str, delay: float = 0.0):
        self.dir = tmp_path / name
        self.dir.mkdir()
        boot = tmp_path / "boot.py"
        if not boot.exists():
            boot.write_text(BOOT)
        command = two_process_launch(str(boot), "run", str(recipe), *args)
        env = {**ENV, "TEST_RECORD_DIR": str(self.dir), "TEST_STEP_DELAY": str(delay)}
        with open(self.dir / "stdout.txt", "w") as out, open(self.dir / "stderr.txt", "w") as err:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=err)

    def stdout(self) -> str:
        return (self.dir / "stdout.txt").read_text()

    def stderr(self) -> str:
        return (self.dir / "stderr.txt").read_text()

    def worker_pids(self) -> list[int]:
        return [int((self.dir / f"pid-{rank}").read_text()) for rank in (0, 1)
                if (self.dir / f"pid-{rank}").exists()]

    def events(self, rank: int) -> list[dict]:
        return [json.loads(line) for line in (self.dir / f"events-{rank}.jsonl").read_text().splitlines()]

    def wait_for(self, condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the launch exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill_all()
                pytest.fail(f"timed out waiting for {what}:\n{self.stderr()[-3000:]}")
            time.sleep(0.005)

    def wait(self, timeout: float = 180.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"the launch did not end within {timeout} s:\n{self.stderr()[-3000:]}")

    def kill_all(self) -> None:
        """SIGKILL to the launcher and to both workers (torchrun starts each in a session of its own)."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in self.worker_pids()):
            assert time.monotonic() < deadline, "a killed worker is still running"
            time.sleep(0.01)

    def finished(self, timeout: float = 180.0) -> None:
        code = self.wait(timeout)
        assert code == 0, self.stderr()[-3000:]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return not re.search(r"^State:\s+[ZX]", state, re.M)  # a zombie no longer runs


@pytest.fixture
def launches(tmp_path):
    """Start launches; whatever a failed test left running is killed at the end."""
    started: list[Launch] = []

    def start(name: str, recipe: Path, *args: str, delay: float = 0.0) -> Launch:
        started.append(Launch(tmp_path, name, recipe, *args, delay=delay))
        return started[-1]

    yield start
    for launch in started:
        if launch.proc.poll() is None or any(alive(pid) for pid in launch.worker_pids()):
            launch.kill_all()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Launch]:
    """Run A: two processes, pretraining included, 6 KTO steps, never interrupted."""
    base = tmp_path_factory.mktemp("uninterrupted")
    launch = Launch(base, "launch", write_recipe(base))
    try:
        launch.finished()
    finally:
        if launch.proc.poll() is None:
            launch.kill_all()
    return base / "run", launch


# ------------------------------------------------------------------------------ helpers


def assert_no_leftovers(run_dir: Path) -> None:
    """No temporary checkpoint, trash or final/ being written, nor a write probe (the lock files stay)."""
    hidden = [p for p in run_dir.rglob(".*") if not is_lock_file(p.name)]
    assert not hidden, hidden


def assert_same_run(expected: Path, actual: Path) -> None:
    """Same reference, same final weights (bitwise), each step logged once with the same metrics."""
    assert_same_weights(expected / "reference" / FINAL, actual / "reference" / FINAL)
    assert_same_weights(expected / FINAL, actual / FINAL)
    rows = metric_rows(actual)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "kto/kl", "grad_norm", "pref/accuracy"):
        assert [r[key] for r in rows] == [r[key] for r in metric_rows(expected)], key
    assert [p.name for p in checkpoints(actual)] == ["step-00000003"]
    assert_checkpoint_whole(checkpoints(actual)[0], CHECKPOINT_FILES)
    assert_no_leftovers(actual)


# ------------------------------------------------------------------------------ run A


def test_two_process_run_writes_each_thing_once(uninterrupted):
    run_dir, launch = uninterrupted
    stderr = launch.stderr()
    # Both processes took part in every stage: each built its share of the pretraining points.
    assert "building pairs [0]" in stderr and "building pairs [1]" in stderr, stderr[-3000:]
    assert launch.stdout().count("run finished") == 1  # printed by the main process only

    assert (run_dir / FINAL).is_file() and (run_dir / "reference" / FINAL).is_file()
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # written by the main process only
    assert all(r["skipped_steps"] == 0 for r in rows)
    assert [r["step"] for r in metric_rows(run_dir / "reference")] == [10, 20, 30]

    # checkpoint_every=3: step 3 only (the last step writes final/, not a checkpoint), with both RNG states.
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000003"]
    assert_checkpoint_whole(checkpoints(run_dir)[0], CHECKPOINT_FILES)
    assert json.loads((checkpoints(run_dir)[0] / "trainer_state.json").read_text()) == {
        "skipped_steps": 0, "step": 3, "run_id": run_id_of(run_dir)}
    assert checkpoints(run_dir / "reference") == []  # 30 steps, no checkpoint_every
    assert_no_leftovers(run_dir)
    assert sorted(p.name for p in run_dir.iterdir() if not is_lock_file(p.name)) == [
        "checkpoints", "final", "metrics.jsonl", "pairs", "recipe.resolved.yaml", "reference", "run.json"]


def test_the_kl_baseline_is_averaged_across_processes(uninterrupted):
    """Diffusion-KTO's KL reference point: the mean over both processes' batches, then clamped at 0."""
    run_dir, launch = uninterrupted
    kl = {rank: [e for e in launch.events(rank) if e["event"] == "kl"] for rank in (0, 1)}
    for rank in (0, 1):
        assert [e["step"] for e in kl[rank]] == list(range(STEPS)), rank
    logged = [r["kto/kl"] for r in metric_rows(run_dir)]
    for e0, e1, value in zip(kl[0], kl[1], logged):
        assert e0["kl"] == e1["kl"] == value  # one value on both processes, and the one logged
        assert e0["kl"] == pytest.approx(max(0.0, (e0["local"] + e1["local"]) / 2), rel=1e-6, abs=1e-9)
    # Not vacuous: after step 1 (student = reference, g = 0 everywhere) the processes' own
    # estimates differ, and the average is not process 0's own.
    assert kl[0][0]["local"] == kl[1][0]["local"] == 0.0
    assert all(e0["local"] != e1["local"] for e0, e1 in zip(kl[0][1:], kl[1][1:]))
    assert any(e["kl"] > 0 for e in kl[0])
    assert any(e0["kl"] != pytest.approx(max(0.0, e0["local"]), rel=1e-3) for e0 in kl[0])


def test_processes_read_disjoint_data(uninterrupted):
    """Within a step the two processes read different samples; together, each epoch once.

    Ordered by (step, process), the samples read form the sampler's sequence:
    every run of ``size`` consecutive reads is a permutation of the dataset.
    """
    _, launch = uninterrupted
    takes = {rank: [e for e in launch.events(rank) if e["event"] == "take"] for rank in (0, 1)}
    for stage, batch, size in (("denoise", 64, 400), ("diffusion_kto", 8, 16)):
        reads = {rank: [e for e in takes[rank] if e["stage"] == stage] for rank in (0, 1)}
        steps = 30 if stage == "denoise" else STEPS
        sequence, checked = [], 0
        for step in range(steps):
            [a] = [e for e in reads[0] if e["step"] == step]
            [b] = [e for e in reads[1] if e["step"] == step]
            assert a["size"] == b["size"] == size
            assert len(a["indices"]) == len(b["indices"]) == batch
            # 2 * batch samples a step: unless they straddle two epochs, none is read twice.
            if step * 2 * batch // size == ((step + 1) * 2 * batch - 1) // size:
                assert not set(a["indices"]) & set(b["indices"]), (stage, step)
                checked += 1
            sequence += a["indices"] + b["indices"]
        assert len(reads[0]) == len(reads[1]) == steps
        assert checked >= steps // 2
        full = len(sequence) // size * size
        for start in range(0, full, size):
            assert sorted(sequence[start:start + size]) == list(range(size)), (stage, start)
        if stage == "diffusion_kto":  # 2 x 8 of 16: one epoch per step, in a new order each time
            assert len({tuple(sequence[i:i + size]) for i in range(0, full, size)}) == STEPS


def test_accumulate_gives_every_micro_step_of_every_process_its_own_slice():
    """``Trainer.accumulate`` itself, in this process, with grad_accum 3 over 3 processes: no overlap anywhere."""
    from prefopt.engine import trainer
    from prefopt.interfaces import LossOutput

    size, batch, grad_accum, world = 72, 4, 3, 3  # 36 reads a step, 2 steps an epoch
    read: list[list[int]] = []

    class Dataset:
        def __len__(self):
            return size

        def batch(self, indices):
            read.append(list(indices))
            x = torch.zeros(len(indices), 2)
            return x, x, ["c"] * len(indices), ["n"] * len(indices)

    cfg = SimpleNamespace(grad_accum=grad_accum, batch_size=batch, max_steps=7, loader_workers=0, loader_prefetch=2)
    workers = []
    for rank in range(world):
        accelerator = SimpleNamespace(accumulate=lambda module: torch.enable_grad(), autocast=torch.enable_grad,
                                      backward=lambda loss: None, device=torch.device("cpu"),
                                      num_processes=world, process_index=rank)
        worker = trainer.Trainer(backbone=None, objective=None, dataset=Dataset(), cfg=cfg, run_dir=Path("."),
                                 seed=0, accelerator=accelerator)
        worker.sampler, worker.module = trainer.EpochSampler(size, seed=0), None
        worker.step_fn = lambda *args: LossOutput(torch.tensor(1.0))  # noqa: E731
        workers.append(worker)
    sequence = []
    for step in range(7):
        per_step = []
        for worker in workers:
            read.clear()
            worker.accumulate(step)
            assert len(read) == grad_accum and all(len(r) == batch for r in read)
            per_step.append(read[:])
        flat = [i for reads in per_step for r in reads for i in r]
        assert len(set(flat)) == len(flat), step  # none twice within the step
        # Ordered by (micro-step, process), the reads continue the sampler's one sequence.
        sequence += [i for micro in range(grad_accum) for rank in range(world) for i in per_step[rank][micro]]
    assert sequence == trainer.EpochSampler(size, seed=0).take(0, len(sequence))


# ------------------------------------------------------------------------------ interrupted, resumed


def test_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path, launches, uninterrupted):
    """SIGKILL to the launcher and both workers after checkpoint 3, then --resume over two processes."""
    expected, _ = uninterrupted
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    killed = launches("killed", recipe, delay=0.3)
    killed.wait_for(lambda: checkpoints(run_dir) and len(killed.worker_pids()) == 2, "checkpoint step 3")
    killed.kill_all()
    assert killed.proc.returncode == -signal.SIGKILL
    assert not (run_dir / "final").exists(), "the run finished before the kill: slow it down"
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000003"]
    assert_checkpoint_whole(checkpoints(run_dir)[0], CHECKPOINT_FILES)

    resumed = launches("resumed", recipe, "--resume")
    resumed.finished()
    assert resumed.stdout().count("run finished") == 1
    # It continued from step 3 (the reference was reused, not trained again).
    assert {e["step"] for e in resumed.events(0) if e["event"] == "take"} == {3, 4, 5}
    assert_same_run(expected, run_dir)


def stop_messages(stderr: str) -> list[tuple[str, int, Path]]:
    """The ``error: stopped by ...`` lines: (what stopped it, after which step, checkpoint), sorted."""
    # Searched anywhere in a line: the processes share stderr, so one's message may follow the
    # other's progress bar on its line.
    pattern = r"error: stopped by (.+?) after step (\d+); checkpoint (\S+); continue with --resume"
    found = re.findall(pattern, stderr)
    assert found and stderr.count("error:") == len(found), stderr[-3000:]
    return sorted((who, int(step), Path(path)) for who, step, path in found)


def assert_stopped_whole(run_dir: Path, launch: Launch) -> tuple[int, list[str]]:
    """Both processes stopped after the same step, past checkpoint 3, with one whole checkpoint.

    Returns the step and who (sorted) the stop messages say stopped the run.
    """
    messages = stop_messages(launch.stderr())
    # One message from each process, unless the first to exit made torchrun send SIGTERM
    # to the other (it tears the rest down) before that one had printed its line.
    assert 1 <= len(messages) <= 2, messages
    assert len({m[1:] for m in messages}) == 1, f"the processes stopped at different points: {messages}"
    _, step, named = messages[0]
    assert 3 < step <= STEPS
    for rank in (0, 1):  # what each process trained: steps 1..step, no further
        trained = [e["step"] for e in launch.events(rank) if e["event"] == "step" and e["stage"] != "denoise"]
        assert trained == list(range(step)), rank
    exits = [launch.dir / f"exit-{rank}" for rank in (0, 1)]
    codes = [path.read_text() for path in exits if path.exists()]
    assert codes and set(codes) == {"143"}, codes  # RunStopped, after the checkpoint
    assert named == run_dir / "checkpoints" / f"step-{step:08d}"
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000003", named.name]
    for path in checkpoints(run_dir):
        assert_checkpoint_whole(path, CHECKPOINT_FILES)  # random_states_0 and _1: both processes saved into it
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, step + 1))
    assert not (run_dir / "final").exists()
    assert_no_leftovers(run_dir)
    return step, [who for who, _, _ in messages]


def test_sigterm_to_one_worker_stops_both_after_the_same_step(tmp_path, launches, uninterrupted):
    """SIGTERM to process 1 alone: the stop flag is all-reduced, both save one checkpoint and stop.

    Then --resume over two processes ends with the uninterrupted run's weights.
    """
    expected, _ = uninterrupted
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    stopped = launches("stopped", recipe, delay=0.3)
    stopped.wait_for(lambda: checkpoints(run_dir) and len(stopped.worker_pids()) == 2, "checkpoint step 3")
    os.kill(stopped.worker_pids()[1], signal.SIGTERM)
    assert stopped.wait(60) != 0  # torchrun reports the workers' exit code 143 as a failure
    step, who = assert_stopped_whole(run_dir, stopped)
    # Process 1 names its signal, process 0 (never signalled by the test) the all-reduced flag;
    # the proof that both stopped together is what each trained, checked above.
    assert set(who) <= {"SIGTERM", "a signal to another process"}

    resumed = launches("resumed", recipe, "--resume")
    resumed.finished()
    assert {e["step"] for e in resumed.events(0) if e["event"] == "take"} == set(range(step, STEPS))
    # Set the stop's checkpoint aside (A has none at that step) and compare the rest of the run.
    (run_dir / "checkpoints" / f"step-{step:08d}").rename(tmp_path / "stop-checkpoint")
    assert_same_run(expected, run_dir)


def test_sigterm_to_the_launcher_stops_the_run_with_a_checkpoint(tmp_path, launches):
    """What a scheduler does: SIGTERM to ``accelerate launch``, which passes it to both workers.

    Both finish the step, save one checkpoint together and exit; the launcher
    itself exits 1 (torchrun's report of its workers' exit code 143).
    """
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    stopped = launches("stopped", recipe, delay=0.3)
    stopped.wait_for(lambda: checkpoints(run_dir) and len(stopped.worker_pids()) == 2, "checkpoint step 3")
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait(60) != 0
    assert not any(alive(pid) for pid in stopped.worker_pids())
    _, who = assert_stopped_whole(run_dir, stopped)
    assert "SIGTERM" in who
