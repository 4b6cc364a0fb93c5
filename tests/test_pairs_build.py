"""Pair builds: killed and resumed, or split over two processes, they give the uninterrupted dataset.

A shard is computed from its own rows and seeds only, so neither a SIGKILL part
way nor ``accelerate launch`` with two processes may change a single byte of
the finished dataset (metadata.jsonl, manifest.json and every shard).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENV, assert_same_weights, cli, two_process_launch, write_toy_recipe

# Started as `python -c BOOT pairs build RECIPE`: shard writes slowed down by a sleep
# (half before the tensor file, half between it and the .json that marks the shard
# complete), so the SIGKILL lands part way; what is computed does not change.
BOOT = r"""
import sys, time
import prefopt.data.build as build
write_shard, write_json = build._write_shard, build.write_json_atomic
def slow_shard(*args, **kwargs):
    time.sleep(0.04)
    return write_shard(*args, **kwargs)
def slow_json(path, obj):
    if path.parent.name == "shards":
        time.sleep(0.04)
    return write_json(path, obj)
build._write_shard, build.write_json_atomic = slow_shard, slow_json
sys.argv = ["prefopt"] + sys.argv[1:]
from prefopt.cli import main
main()
"""


def write_recipe(directory: Path) -> Path:
    # 48 rows in 24 shards: enough for a kill to land part way (train.lr stays at its default).
    return write_toy_recipe(directory, pairs={"source": {"pairs_per_condition": 6}, "shard_size": 2,
                                              "sample_batch_size": 1}, train={"lr": None})


def complete_shards(pairs_dir: Path) -> list[Path]:
    return sorted((pairs_dir / "shards").glob("shard-*.json")) if (pairs_dir / "shards").is_dir() else []


def assert_same_dataset(expected: Path, actual: Path) -> None:
    assert (actual / "metadata.jsonl").read_text() == (expected / "metadata.jsonl").read_text()
    assert json.loads((actual / "manifest.json").read_text()) == json.loads((expected / "manifest.json").read_text())
    names = sorted(p.name for p in (expected / "shards").iterdir())
    assert sorted(p.name for p in (actual / "shards").iterdir()) == names  # no leftovers either
    for name in names:
        if name.endswith(".safetensors"):
            assert_same_weights(expected / "shards" / name, actual / "shards" / name)
        else:
            assert (actual / "shards" / name).read_bytes() == (expected / "shards" / name).read_bytes(), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """A one-process build that was never interrupted (its run dir, with reference/ and pairs/)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    code, err = cli("pairs", "build", write_recipe(base))
    assert code == 0, err
    run_dir = base / "run"
    assert json.loads((run_dir / "pairs" / "manifest.json").read_text())["num_shards"] == 24
    return run_dir


def test_killed_build_resumes_to_the_same_dataset(tmp_path, uninterrupted):
    recipe = write_recipe(tmp_path)
    pairs_dir = tmp_path / "run" / "pairs"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", BOOT, "pairs", "build", str(recipe)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 90
    while len(complete_shards(pairs_dir)) < 5:
        assert proc.poll() is None, f"the build ended before it was killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for shards"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL

    written = len(complete_shards(pairs_dir))
    assert 5 <= written < 24
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    assert manifest["complete"] is False and not (pairs_dir / "metadata.jsonl").exists()
    before = {p: p.read_bytes() for p in complete_shards(pairs_dir)}

    code, err = cli("pairs", "build", recipe)
    assert code == 0, err
    assert {p: p.read_bytes() for p in before} == before, "a complete shard was rewritten"
    assert_same_dataset(uninterrupted / "pairs", pairs_dir)


def test_two_process_build_gives_the_same_dataset(tmp_path, uninterrupted):
    """``accelerate launch`` with two processes (gloo on the CPU): shard k is written by process k mod 2.

    The reference is copied from the one-process run: pretraining it over two
    processes doubles its batch, so it would be another reference (and other pairs).
    """
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copytree(uninterrupted / "reference", run_dir / "reference")
    command = two_process_launch("-m", "prefopt.cli", "pairs", "build", str(recipe))
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building pairs [0]" in done.stderr and "building pairs [1]" in done.stderr, done.stderr[-3000:]
    assert done.stdout.count("pair dataset ready") == 1  # printed by the main process only
    assert_same_dataset(uninterrupted / "pairs", run_dir / "pairs")
