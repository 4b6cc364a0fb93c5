"""Run directories that cannot be lost or silently wrong: locks, checksums, contained paths, one-line errors.

Locks are tested with real processes (the kernel's flock is what is under
test); checksums by flipping bytes in what a real toy run wrote; failing file
systems by making the writes of a real run fail (simulated with monkeypatch,
and on a tiny tmpfs where the test may mount one).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import ENV, FINAL, SLOW_PREFERENCE_STEPS, assert_same_weights, cli, one_error, write_toy_recipe
from prefopt.checksums import RECORD, run_id_of
from prefopt.errors import DirectoryBusyError, IntegrityError
from prefopt.locking import LOCK_FILES, hold

# A toy run that takes about a second: no pretraining, 4 steps, a checkpoint at steps 2 (and kept).
FAST = {"pretrain": False, "train": {"max_steps": 4, "checkpoint_every": 2}}
EVAL = [{"name": "toy2d_modes", "samples_per_condition": 10}]


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished fast toy run (checkpoints at steps 2 and, kept, none at 4: final/ instead)."""
    base = tmp_path_factory.mktemp("finished")
    recipe = write_toy_recipe(base, **FAST, eval=EVAL)
    code, err = cli("run", recipe)
    assert code == 0, err
    return base / "run"


def copy_run(run_dir: Path, tmp_path: Path, **changes) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return write_toy_recipe(tmp_path, target, **{**FAST, "eval": EVAL, **changes})


# ------------------------------------------------------------------------------------ locks

HOLDER = r"""
import sys, time
from prefopt.locking import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

RACER = r"""
import os, sys, time
from prefopt.errors import DirectoryBusyError
from prefopt.locking import hold
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every racer starts at the same moment
try:
    with hold(sys.argv[1]):
        open(os.path.join(sys.argv[1], f"winner-{sys.argv[3]}"), "w").close()
        time.sleep(3.0)  # longer than any racer can take to start
except DirectoryBusyError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def start_holder(directory: Path, seconds: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(seconds)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def test_of_many_simultaneous_starts_exactly_one_wins(tmp_path):
    """24 processes start at one moment, 8 on each of 3 directories: one per directory gets it."""
    start = time.time() + 2.5
    racers = {(d, i): subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / f"run-{d}"), str(start), str(i)],
                                       env=ENV, stderr=subprocess.PIPE, text=True)
              for d in range(3) for i in range(8)}
    codes = {key: proc.wait(60) for key, proc in racers.items()}
    errors = {key: proc.stderr.read() for key, proc in racers.items()}
    for d in range(3):
        assert sorted(codes[d, i] for i in range(8)) == [0] + [3] * 7, errors
        [winner] = [i for i in range(8) if codes[d, i] == 0]
        assert [p.name for p in (tmp_path / f"run-{d}").glob("winner-*")] == [f"winner-{winner}"]
        for i in range(8):
            if i != winner:
                assert "in use by another prefopt command (pid" in errors[d, i], errors[d, i]


def test_a_held_run_directory_is_refused_naming_the_holder(tmp_path):
    recipe = write_toy_recipe(tmp_path, **FAST)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("the user's")
    holder = start_holder(run_dir)
    try:
        for args in (["run", recipe], ["run", recipe, "--overwrite"], ["run", recipe, "--resume"],
                     ["pairs", "build", recipe], ["eval", recipe]):
            code, err = cli(*args)
            if args[0] == "eval":  # no final/ yet: said before the lock is needed
                assert code == 2
                continue
            one_error(code, err, str(run_dir), "in use by another prefopt command", f"pid {holder.pid}",
                      str(run_dir))
        assert (run_dir / "notes.txt").read_text() == "the user's"  # --overwrite cleared nothing
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(["notes.txt", *LOCK_FILES])
    finally:
        stop(holder)


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(30)
    with hold(tmp_path):  # kill -9 left no lock behind
        pass


def test_processes_left_from_an_earlier_command_still_hold_it(tmp_path):
    """A rank that outlives its rank 0 (the shared hold) keeps a new command out."""
    import fcntl

    proc = subprocess.Popen([sys.executable, "-c", r"""
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
""", str(tmp_path / LOCK_FILES[1])], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryBusyError, match="still in use by processes of an earlier command"):
            with hold(tmp_path):
                pass
    finally:
        stop(proc)
    with open(tmp_path / LOCK_FILES[0]) as handle:  # the refused command left no lock behind
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_nested_hold_of_the_same_directory_is_the_outer_one(tmp_path):
    with hold(tmp_path):
        with hold(tmp_path / "." ):
            pass
        holder = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "0"], env=ENV,
                                capture_output=True, text=True)
        assert holder.returncode != 0 and "in use by another prefopt command" in holder.stderr


BOOT = r"""
import os, sys, time
""" + SLOW_PREFERENCE_STEPS + r"""
sys.argv = ["prefopt"] + sys.argv[1:]
from prefopt.cli import main
main()
"""


@pytest.mark.slow  # a real `prefopt run` subprocess: ~15 s of start-up on a small machine
def test_overwrite_racing_a_live_run_is_refused(tmp_path):
    recipe = write_toy_recipe(tmp_path, pretrain=False, train={"max_steps": 400, "checkpoint_every": 0})
    run_dir = tmp_path / "run"
    env = {**ENV, "TEST_STEP_DELAY": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", BOOT, "run", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        resolved = (run_dir / "recipe.resolved.yaml").read_bytes()
        changed = write_toy_recipe(tmp_path, run_dir, name="changed.yaml", pretrain=False,
                                   objective={"beta": 500})
        code, err = cli("run", changed, "--overwrite")
        one_error(code, err, "in use by another prefopt command", f"pid {proc.pid}")
        assert (run_dir / "recipe.resolved.yaml").read_bytes() == resolved
        assert proc.poll() is None  # the live run goes on untouched
    finally:
        stop(proc)


# ------------------------------------------------------------------------------ contained paths

@pytest.mark.parametrize("name", ["../victim", "/tmp/elsewhere", "", ".", "..", "a/b", ".hidden", "seed-0",
                                  "report.md", "x" * 80, "a\nb"])
def test_hostile_variant_names_are_refused_before_anything_is_written(tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    recipe = write_toy_recipe(tmp_path / "cmp", tmp_path / "cmp" / "out", **FAST,
                              compare={"variants": {name: {"objective": {"beta": 500}}}, "seeds": [0]})
    for command in ("validate", "compare"):
        code, err = cli(command, recipe)
        one_error(code, err, "variant name")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "cmp" / "out").exists()


def test_a_variant_directory_that_leads_outside_is_refused(tmp_path):
    from prefopt.compare import variant_dir
    from prefopt.errors import RecipeError

    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "dpo").symlink_to(outside)  # planted by someone: the path is checked, not just the name
    with pytest.raises(RecipeError, match="would write outside"):
        variant_dir(root, "dpo", 0)
    assert variant_dir(root, "ddspo", 0) == root / "ddspo" / "seed-0"


def test_variant_names_differing_only_in_case_are_one_directory(tmp_path):
    recipe = write_toy_recipe(tmp_path, **FAST, compare={"variants": {"DPO": {}, "dpo": {}}, "seeds": [0]})
    one_error(*cli("validate", recipe), "differ only in case")


def test_checkpoint_must_be_one_of_this_runs(finished, tmp_path):
    recipe = copy_run(finished, tmp_path / "a")
    other = copy_run(finished, tmp_path / "b")  # a copy: same weights, but its own directory
    del other
    foreign = tmp_path / "b" / "run" / "checkpoints" / "step-00000002"
    for which in (str(foreign), "../../b/run/checkpoints/step-00000002", "/etc", "step-2/../../x"):
        code, err = cli("run", recipe, "--resume", "--checkpoint", which)
        one_error(code, err, "--checkpoint", "name a checkpoint of this run")
    # Another run's checkpoint copied into this run's checkpoints/: its run id gives it away.
    second = tmp_path / "c"
    recipe_c = write_toy_recipe(second, **FAST, eval=EVAL)
    assert cli("run", recipe_c)[0] == 0
    mine = tmp_path / "a" / "run" / "checkpoints"
    shutil.copytree(second / "run" / "checkpoints" / "step-00000002", mine / "step-00000003")
    code, err = cli("run", recipe, "--resume", "--checkpoint", "step-00000003")
    one_error(code, err, str(mine / "step-00000003"), "belongs to another run")


# ---------------------------------------------------------------------------------- integrity

CHECKPOINT_FILES = ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                    "trainer_state.json", RECORD]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_flipped_byte_in_any_checkpoint_file_is_refused(finished, tmp_path, name):
    recipe = copy_run(finished, tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    flip_byte(checkpoint / name)
    code, err = cli("run", recipe, "--resume")
    if name == RECORD:
        one_error(code, err, str(checkpoint))
    else:
        one_error(code, err, str(checkpoint / name), "damaged", f"rm -r {checkpoint}", "--resume")


def test_the_command_a_damaged_checkpoint_names_repairs_the_run(finished, tmp_path):
    recipe = copy_run(finished, tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    flip_byte(checkpoint / "model.safetensors")
    line = one_error(*cli("run", recipe, "--resume"), "model.safetensors")
    assert f"rm -r {checkpoint}" in line and "from step 0" in line
    shutil.rmtree(checkpoint)
    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(finished / FINAL, tmp_path / "run" / FINAL)


def test_files_added_to_or_missing_from_a_checkpoint_are_refused(finished, tmp_path):
    recipe = copy_run(finished, tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(b"planted")
    one_error(*cli("run", recipe, "--resume"), "custom_checkpoint_0.pkl", "did not write")
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    (checkpoint / "scheduler.bin").unlink()
    one_error(*cli("run", recipe, "--resume"), str(checkpoint / "scheduler.bin"), "missing")


def test_damaged_final_weights_are_refused_by_eval_and_rewritten_by_resume(finished, tmp_path):
    recipe = copy_run(finished, tmp_path)
    weights = tmp_path / "run" / FINAL
    flip_byte(weights, offset=weights.stat().st_size - 3)  # inside the tensor data
    line = one_error(*cli("eval", recipe), str(weights), "damaged")
    assert "--resume" in line
    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert cli("eval", recipe)[0] == 0
    assert_same_weights(finished / FINAL, weights)


def test_final_weights_of_another_run_are_refused(finished, tmp_path):
    recipe = copy_run(finished, tmp_path / "a")
    (tmp_path / "a" / "run" / "run.json").write_text(json.dumps({"run_id": "someone-else"}))
    one_error(*cli("eval", recipe), "belongs to another run")


def test_a_damaged_reference_is_refused_and_its_repair_works(tmp_path):
    recipe = write_toy_recipe(tmp_path, train={"max_steps": 2, "checkpoint_every": 0})
    data = yaml.safe_load(recipe.read_text())
    data["pretrain"]["train"]["max_steps"] = 5  # a short pretraining: the reference only has to exist
    recipe.write_text(yaml.safe_dump(data))
    assert cli("run", recipe)[0] == 0
    reference = tmp_path / "run" / "reference"
    weights = reference / FINAL
    flip_byte(weights, offset=weights.stat().st_size - 3)
    line = one_error(*cli("run", recipe, "--overwrite"), str(weights), "damaged", f"rm -r {reference}")
    shutil.rmtree(reference)
    code, err = cli("run", recipe, "--overwrite")
    assert code == 0, err
    assert line


@pytest.mark.parametrize("name, content, fragment", [
    ("recipe.resolved.yaml", b"\xff\xfe not yaml", "recipe.resolved.yaml is damaged"),
    ("recipe.resolved.yaml", b"seed: [1, 2\n", "recipe.resolved.yaml is damaged"),
    ("recipe.resolved.yaml", b"- a list\n", "not a resolved recipe"),
    ("run.json", b"{cut", "run record"),
    ("metrics.jsonl", b'{"step": 1, "loss": 1}\n\xff\xff garbage\n{"step": 2, "loss": 1}\n', "line 2 is damaged"),
])
def test_damaged_run_files_are_one_line(finished, tmp_path, name, content, fragment):
    recipe = copy_run(finished, tmp_path)
    (tmp_path / "run" / name).write_bytes(content)
    one_error(*cli("run", recipe, "--resume"), fragment)


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(finished, tmp_path):
    recipe = copy_run(finished, tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 5, "lo')
    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- failing writes

class FailingWrites:
    """``open()`` whose files named ``target`` fail: at open (errors with a file name) or on write (a full disk)."""

    def __init__(self, monkeypatch, target: str, code: int, at: str = "write"):
        real_open = builtins.open

        def fake_open(file, mode="r", *args, **kwargs):
            name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
            hit = isinstance(name, str) and Path(name).name.lstrip(".").startswith(target)
            if hit and any(m in mode for m in "wax"):
                if at == "open":
                    raise OSError(code, os.strerror(code), name)
                handle = real_open(file, mode, *args, **kwargs)
                return _FailingHandle(handle, code)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)  # what pathlib's write_text and open use


class _FailingHandle:
    def __init__(self, handle, code):
        self._handle, self._code = handle, code

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code))  # no file name, as a real ENOSPC write

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


# (file that fails, command, name the error line must hold)
WRITERS = [
    ("recipe.resolved.yaml", "run", "recipe.resolved.yaml"),
    ("run.json", "run", "run.json"),
    ("metrics.jsonl", "run", "metrics.jsonl"),
    ("trainer_state.json", "run", "checkpoints/step-00000002"),
    ("config.json", "run", "/final"),  # the first file of final/ (diffusers' save_pretrained)
    ("eval.json", "run", "eval.json"),
    ("samples.csv", "run", "samples.csv"),
]


@pytest.mark.parametrize("target, command, named", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_full_disk_on_each_writer_is_one_line(tmp_path, monkeypatch, target, command, named):
    recipe = write_toy_recipe(tmp_path, **FAST, eval=EVAL)
    FailingWrites(monkeypatch, target, errno.ENOSPC)
    one_error(*cli(command, recipe), named, "No space left on device")
    for leftover in (tmp_path / "run").rglob("*"):  # nothing cut short is left under its real name
        assert not leftover.name.startswith(".") or leftover.name in LOCK_FILES or leftover.is_dir(), leftover


@pytest.mark.parametrize("target, code", [("recipe.resolved.yaml", errno.EACCES), ("metrics.jsonl", errno.EIO),
                                          ("eval.json", errno.EROFS)])
def test_other_os_errors_on_writers_are_one_line(tmp_path, monkeypatch, target, code):
    recipe = write_toy_recipe(tmp_path, **FAST, eval=EVAL)
    FailingWrites(monkeypatch, target, code, at="open")
    one_error(*cli("run", recipe), target, os.strerror(code))


@pytest.mark.slow  # the whole matrix; the default run has one error kind per writer above
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EIO, errno.EROFS])
@pytest.mark.parametrize("at", ["open", "write"])
@pytest.mark.parametrize("target, command, named", WRITERS, ids=[w[0] for w in WRITERS])
def test_every_os_error_on_every_writer_is_one_line(tmp_path, monkeypatch, target, command, named, at, code):
    recipe = write_toy_recipe(tmp_path, **FAST, eval=EVAL)
    FailingWrites(monkeypatch, target, code, at=at)
    one_error(*cli(command, recipe), named, os.strerror(code))


def test_a_full_disk_while_saving_weights_is_one_line(tmp_path, monkeypatch):
    """torch and safetensors report a full disk as RuntimeError: still one line, naming what was being written."""
    import accelerate

    recipe = write_toy_recipe(tmp_path, **FAST)

    def full(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    line = one_error(*cli("run", recipe), "could not write checkpoint", "step-00000002", "file write failed")
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    del line


def test_an_unreadable_file_is_one_line_naming_it(finished, tmp_path, monkeypatch):
    recipe = copy_run(finished, tmp_path)
    target = tmp_path / "run" / "recipe.resolved.yaml"
    real = Path.read_bytes

    def denied(self):
        if self == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    one_error(*cli("run", recipe, "--resume"), str(target), "Permission denied")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A mounted tmpfs of a few hundred KiB (skipped where this process may not mount one)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()

    def mount_with(size: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                                capture_output=True)
        if result.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        return mount

    yield mount_with
    # Lazy: this process may still map a file from it (the pair reader caches whole shards).
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("size", ["48k", "160k"])
def test_a_real_full_disk_is_one_line(tmp_path, tiny_tmpfs, size):
    run_dir = tiny_tmpfs(size) / "run"
    recipe = write_toy_recipe(tmp_path, run_dir, **FAST, eval=EVAL)
    code, err = cli("run", recipe)
    if code == 0:  # the run fits: nothing to see at this size
        return
    one_error(code, err, "No space left on device", str(run_dir))


# --------------------------------------------------------------------- runs that fail early

def test_a_run_that_fails_before_its_first_step_leaves_a_reusable_directory(tmp_path):
    missing = tmp_path / "no-such-policy"
    recipe = write_toy_recipe(tmp_path, **FAST, objective={"winner_policy": str(missing),
                                                           "loser_policy": str(missing)})
    one_error(*cli("run", recipe), str(missing), "do not exist")
    assert (tmp_path / "run" / "recipe.resolved.yaml").exists()
    fixed = write_toy_recipe(tmp_path, **FAST)
    code, err = cli("run", fixed)  # no --overwrite needed
    assert code == 0, err


def test_a_run_that_trained_is_not_taken_over(finished, tmp_path):
    recipe = copy_run(finished, tmp_path)
    one_error(*cli("run", recipe), "already holds a run", "--overwrite")


def test_non_utf8_prompts_are_one_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a caf\u00e9 at night\n".encode("latin-1"))
    recipe = write_toy_recipe(tmp_path, **FAST)
    data = yaml.safe_load(recipe.read_text())
    data["pairs"] = {"source": {"name": "random_removal"}, "prompts": {"path": str(prompts)}}
    recipe.write_text(yaml.safe_dump(data))
    one_error(*cli("run", recipe), str(prompts), "not UTF-8", "byte 5")
    # It failed before training: the same directory takes the next plain run.
    recipe.write_text(yaml.safe_dump({**data, "pairs": yaml.safe_load(write_toy_recipe(
        tmp_path, name="ok.yaml", **FAST).read_text())["pairs"]}))
    assert cli("run", recipe)[0] == 0


def test_integrity_errors_are_prefopt_errors():
    assert issubclass(IntegrityError, Exception) and issubclass(DirectoryBusyError, Exception)
    assert run_id_of(Path("/nonexistent-run-dir")) is None


def test_a_users_pair_dataset_is_held_while_it_is_built(tmp_path):
    shared = tmp_path / "shared-pairs"
    recipe = write_toy_recipe(tmp_path, **{**FAST, "pairs": {"dir": str(shared)}})
    holder = start_holder(shared)
    try:
        one_error(*cli("run", recipe), "pair dataset", str(shared), f"pid {holder.pid}")
        one_error(*cli("pairs", "build", recipe), "pair dataset", str(shared), f"pid {holder.pid}")
    finally:
        stop(holder)
    code, err = cli("run", recipe)  # the run's failure came before training: the directory is reusable
    assert code == 0, err


@pytest.mark.parametrize("which", ["cwd", "parent-of-cwd"])
def test_overwrite_never_clears_the_working_directory(tmp_path, monkeypatch, which):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work)
    output_dir = work if which == "cwd" else tmp_path
    recipe = write_toy_recipe(tmp_path / "recipes", output_dir, **FAST)
    one_error(*cli("run", recipe, "--overwrite"), "--overwrite would clear", "working directory")
    assert (work / "notes.txt").read_text() == "keep me"


def test_an_empty_output_dir_is_refused(tmp_path):
    recipe = write_toy_recipe(tmp_path, **FAST)
    one_error(*cli("validate", recipe, "output_dir="), "output_dir")
    one_error(*cli("validate", recipe, "output_dir=' '"), "output_dir")
