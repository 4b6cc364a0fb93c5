"""Crash safety: non-finite steps, full disks, unwritable or broken directories, impossible precision.

Each failure must end in one ``error: ...`` line (exit code 2), never a
traceback, and must leave what was already written (checkpoints, pair
datasets) usable. Everything runs in-process through ``prefopt.cli.main``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prefopt.cli
from helpers import FINAL, assert_same_weights, cli, error_lines, metric_rows, write_toy_recipe
from prefopt.hookspecs import hookimpl
from prefopt.registry import PluginRegistry
from prefopt_objectives.ddspo import DDSPO


# ---------------------------------------------------------------------- a test-only objective


class FaultyDDSPO(DDSPO):
    """DDSPO whose loss is NaN, or so large its gradients overflow, on chosen steps (1-based)."""

    name = "faulty_ddspo"
    nan_steps: set[int] = set()
    huge_steps: set[int] = set()

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = 0

    def loss(self, inputs):
        out = super().loss(inputs)
        self.calls += 1  # one call per step: grad_accum is 1
        if self.calls in self.nan_steps:
            out.loss = out.loss * float("nan")
        if self.calls in self.huge_steps:
            out.loss = out.loss * 3e38  # finite, but its gradient norm is not
        return out


@hookimpl
def prefopt_objectives():
    return [FaultyDDSPO]


faulty_plugin = types.ModuleType("faulty_plugin")
faulty_plugin.prefopt_objectives = prefopt_objectives
faulty_plugin.PREFOPT_API = 2


@pytest.fixture()
def faulty(monkeypatch):
    """The CLI's registry gains ``faulty_ddspo``; its fault steps are reset after the test."""
    monkeypatch.setattr(prefopt.cli, "_registry", lambda: PluginRegistry(modules=[faulty_plugin]))
    monkeypatch.setattr(FaultyDDSPO, "nan_steps", set())
    monkeypatch.setattr(FaultyDDSPO, "huge_steps", set())
    return FaultyDDSPO


# ---------------------------------------------------------------------------------- helpers


# The tiny toy recipe without pretraining unless a test asks for it: no test here needs a trained reference.
write_recipe = partial(write_toy_recipe, pretrain=False)


def one_error(code: int, stderr: str) -> str:
    """The run failed the way users should see failures: exit 2, one error line, no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    return errors[0]


def checkpoints(run_dir: Path) -> list[str]:
    """Every name in ``checkpoints/``, temporary ``.tmp-step-*`` directories included (none may be left)."""
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("uninterrupted")
    code, err = cli("run", write_recipe(base))
    assert code == 0, err
    return base / "run"


# ------------------------------------------------------------------------- non-finite guard


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, faulty, uninterrupted):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    faulty.nan_steps = {25}
    line = one_error(*cli("run", recipe, "objective.name=faulty_ddspo"))
    assert line == (f"error: non-finite loss at step 25; stopping "
                    f"(last good checkpoint: {run_dir / 'checkpoints' / 'step-00000020'})")
    assert checkpoints(run_dir) == ["step-00000010", "step-00000020"]
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, 25))
    assert not (run_dir / "final").exists()

    # The checkpoint is intact: resuming from it ends with the weights of a run that never failed.
    faulty.nan_steps = set()
    code, err = cli("run", recipe, "objective.name=faulty_ddspo", "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, 41))


def test_nonfinite_gradient_norm_stops_before_the_first_checkpoint(tmp_path, faulty):
    faulty.huge_steps = {3}
    line = one_error(*cli("run", write_recipe(tmp_path), "objective.name=faulty_ddspo"))
    assert line == "error: non-finite gradient norm at step 3; stopping (no checkpoint was written yet)"


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, faulty, caplog):
    run_dir = tmp_path / "run"
    faulty.nan_steps = {5, 12}
    faulty.huge_steps = {30}
    code, err = cli("run", write_recipe(tmp_path), "objective.name=faulty_ddspo", "train.on_nonfinite=skip")
    assert code == 0, err
    assert caplog.messages == [
        "non-finite loss at step 5: step skipped (1 so far)",
        "non-finite loss at step 12: step skipped (2 so far)",
        "non-finite gradient norm at step 30: step skipped (3 so far)",
        "3 steps were skipped for non-finite values",
    ]
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 41))
    skipped = {r["step"]: r["skipped_steps"] for r in rows}
    assert skipped[4] == 0 and skipped[5] == 1 and skipped[12] == 2 and skipped[30] == 3 and skipped[40] == 3
    assert math.isnan(rows[4]["loss"]) and math.isnan(rows[11]["loss"]) and math.isnan(rows[29]["grad_norm"])
    weights = load_file(str(run_dir / FINAL))
    assert all(torch.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------ failing disk writes


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch, uninterrupted):
    """ENOSPC in the second checkpoint: one clear line, step-10 usable, no temporary left behind."""
    import accelerate

    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    save_state = accelerate.Accelerator.save_state
    calls = []

    def failing_save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a tensor")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", failing_save_state)
    line = one_error(*cli("run", recipe))
    assert line == (f"error: could not write checkpoint {run_dir / 'checkpoints' / 'step-00000020'}: "
                    "No space left on device")
    assert checkpoints(run_dir) == ["step-00000010"]  # no .tmp-step-00000020 either

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_state)
    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, 41))


def test_full_disk_while_saving_the_final_weights(tmp_path, monkeypatch, uninterrupted):
    from prefopt_backbones.toy2d import Toy2DBackbone

    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    save = Toy2DBackbone.save

    def failing_save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Toy2DBackbone, "save", failing_save)
    line = one_error(*cli("run", recipe))
    assert line == f"error: could not write {run_dir / 'final'}: No space left on device"
    assert not (run_dir / "final").exists() and not (run_dir / ".final.tmp").exists()
    assert checkpoints(run_dir) == ["step-00000020", "step-00000030"]

    monkeypatch.setattr(Toy2DBackbone, "save", save)
    code, err = cli("run", recipe, "--resume")
    assert code == 0, err
    assert_same_weights(uninterrupted / FINAL, run_dir / FINAL)


def test_output_dir_under_a_file(tmp_path):
    """A path that cannot become a directory (works as root too, unlike file permissions)."""
    (tmp_path / "afile").write_text("not a directory")
    output_dir = tmp_path / "afile" / "run"
    recipe = write_recipe(tmp_path, output_dir, pretrain=True)
    line = one_error(*cli("run", recipe))
    assert line == f"error: output_dir {output_dir} is not writable: Not a directory"
    line = one_error(*cli("pairs", "build", recipe))
    assert line == f"error: output_dir {output_dir} is not writable: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_output_dir_without_write_permission(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        recipe = write_recipe(tmp_path, parent / "run")
        line = one_error(*cli("run", recipe))
        assert line == f"error: output_dir {parent / 'run'} is not writable: Permission denied"
    finally:
        parent.chmod(0o700)


def test_pairs_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    recipe = write_recipe(tmp_path)
    line = one_error(*cli("run", recipe, f"pairs.dir={tmp_path / 'afile' / 'pairs'}"))
    assert line == f"error: could not write pair dataset {tmp_path / 'afile' / 'pairs'}: Not a directory"


# ---------------------------------------------------------------------------- pair datasets


def test_missing_or_empty_pairs_dir_is_built(tmp_path):
    for name in ("missing", "empty"):
        pairs_dir = tmp_path / name
        if name == "empty":
            pairs_dir.mkdir()
        recipe = write_recipe(tmp_path, tmp_path / f"run-{name}", name=f"{name}.yaml")
        code, err = cli("run", recipe, f"pairs.dir={pairs_dir}", "train.max_steps=2")
        assert code == 0, err
        assert json.loads((pairs_dir / "manifest.json").read_text())["complete"] is True
        assert not (tmp_path / f"run-{name}" / "pairs").exists()


def test_corrupt_manifest(tmp_path):
    """Refused where it is read; rewritten by a build (the dataset's settings come from the recipe)."""
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    (pairs_dir / "manifest.json").write_text('{"format": 1, "backbone": {"fam')
    recipe = write_recipe(tmp_path)
    line = one_error(*cli("pairs", "show", pairs_dir, "--recipe", recipe))
    assert line.startswith(f"error: {pairs_dir / 'manifest.json'} is damaged (not valid JSON)")
    code, err = cli("run", recipe, f"pairs.dir={pairs_dir}", "train.max_steps=2")
    assert code == 0, err


def test_a_damaged_backbone_record_or_count_for_pairs_show_is_one_line(tmp_path):
    pairs_dir = tmp_path / "pairs"
    code, err = cli("pairs", "build", write_recipe(tmp_path), f"pairs.dir={pairs_dir}")
    assert code == 0, err
    record = pairs_dir / "backbone.json"
    made_with = json.loads(record.read_text())
    record.write_text(json.dumps({**made_with, "config": {**made_with["config"], "bogus": 1}}))
    line = one_error(*cli("pairs", "show", pairs_dir))
    assert line.startswith(f"error: {record} is damaged (bogus: ") and "pass --recipe" in line
    record.write_text(json.dumps(made_with))
    for count in ("0", "-2"):
        assert "--count" in one_error(*cli("pairs", "show", pairs_dir, "--count", count))
    # The whole record is read again (the toy's points have no images to draw, which is the next check).
    assert "no images to decode" in one_error(*cli("pairs", "show", pairs_dir, "--count", "2"))


def test_corrupt_shard_is_refused(tmp_path):
    pairs_dir = tmp_path / "pairs"
    recipe = write_recipe(tmp_path)
    code, err = cli("pairs", "build", recipe, f"pairs.dir={pairs_dir}")
    assert code == 0, err
    shard = pairs_dir / "shards" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the tensor bytes: the file still parses
    shard.write_bytes(bytes(data))
    line = one_error(*cli("run", recipe, f"pairs.dir={pairs_dir}"))
    assert line.startswith(f"error: {pairs_dir / 'shards' / 'shard-00000.safetensors'} is damaged (row ")
    assert line.endswith(f"repair it with `prefopt pairs build RECIPE` (the recipe that built {pairs_dir})")


def test_pairs_built_for_another_backbone_are_refused(tmp_path):
    pairs_dir = tmp_path / "pairs"
    code, err = cli("pairs", "build", write_recipe(tmp_path), f"pairs.dir={pairs_dir}")
    assert code == 0, err
    six = write_recipe(tmp_path, tmp_path / "run6", "six.yaml",
                       backbone={"num_conditions": 6}, pairs={"source": {"num_conditions": 6}})
    line = one_error(*cli("run", six, f"pairs.dir={pairs_dir}"))
    assert line == (f"error: pair dataset {pairs_dir} was built for another backbone: "
                    "num_conditions is 8 there, 6 here")


def test_unfinished_pairs_with_other_settings_are_refused(tmp_path):
    """An interrupted build is only ever finished with the settings it was started with."""
    pairs_dir = tmp_path / "pairs"
    recipe = write_recipe(tmp_path)
    code, err = cli("pairs", "build", recipe, f"pairs.dir={pairs_dir}")
    assert code == 0, err
    from prefopt.data.integrity import seal

    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    (pairs_dir / "manifest.json").write_text(json.dumps(seal({**manifest, "complete": False})))
    line = one_error(*cli("run", recipe, f"pairs.dir={pairs_dir}", "pairs.source.pairs_per_condition=3"))
    assert line.startswith(f"error: pair dataset {pairs_dir} was built with different settings")


def test_finished_pairs_with_other_settings_are_rebuilt_in_the_run_and_refused_elsewhere(tmp_path):
    """A finished pair dataset is reused only for the settings it was built with.

    In the run's own pairs/ (prefopt chose the place) --overwrite rebuilds it;
    a user's pairs.dir is never deleted: a mismatch there is an error.
    """
    recipe = write_recipe(tmp_path)
    code, err = cli("run", recipe, "train.max_steps=2")
    assert code == 0, err
    code, err = cli("run", recipe, "--overwrite", "train.max_steps=2", "pairs.source.pairs_per_condition=3")
    assert code == 0, err
    manifest = json.loads((tmp_path / "run" / "pairs" / "manifest.json").read_text())
    assert manifest["num_rows"] == 8 * 3 and manifest["pairs"]["source"]["pairs_per_condition"] == 3

    user_dir = tmp_path / "run" / "pairs"
    line = one_error(*cli("run", recipe, "--overwrite", "train.max_steps=2", f"pairs.dir={user_dir}"))
    assert line == (f"error: pair dataset {user_dir} was built with different pairs settings; "
                    "delete it or point pairs.dir elsewhere")
    assert json.loads((user_dir / "manifest.json").read_text()) == manifest  # untouched


def test_pairs_in_another_prefopts_format_are_rebuilt_in_the_run_and_refused_elsewhere(tmp_path):
    """A whole dataset written by another prefopt version (pair format 2) is never rebuilt in a user's pairs.dir."""
    from prefopt.data.integrity import seal

    recipe = write_recipe(tmp_path)
    code, err = cli("run", recipe, "train.max_steps=2")
    assert code == 0, err
    pairs_dir = tmp_path / "run" / "pairs"
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    (pairs_dir / "manifest.json").write_text(json.dumps(seal({**manifest, "format": 2})))
    before = {p.name: p.read_bytes() for p in sorted((pairs_dir / "shards").iterdir())}
    for command in (["pairs", "build", recipe, f"pairs.dir={pairs_dir}"],
                    ["run", recipe, "--overwrite", "train.max_steps=2", f"pairs.dir={pairs_dir}"]):
        line = one_error(*cli(*command))
        assert line == (f"error: pair dataset {pairs_dir} is in format 2 (another prefopt version), this "
                        "prefopt reads 3; delete it or point pairs.dir elsewhere")
        assert {p.name: p.read_bytes() for p in sorted((pairs_dir / "shards").iterdir())} == before  # untouched
    # In the run's own pairs/ (prefopt chose the place) --overwrite rebuilds it in the current format.
    code, err = cli("run", recipe, "--overwrite", "train.max_steps=2")
    assert code == 0, err
    assert json.loads((pairs_dir / "manifest.json").read_text())["format"] == 3


# -------------------------------------------------------------------------------- precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 works with a GPU")
@pytest.mark.parametrize("field", ["train", "pretrain.train"])
def test_fp16_on_a_cpu_machine(tmp_path, field):
    recipe = write_recipe(tmp_path, pretrain=True)
    line = one_error(*cli("run", recipe, f"{field}.mixed_precision=fp16"))
    assert line == f"error: {field}.mixed_precision=fp16 needs a GPU; use bf16 or no on a CPU machine"
    assert not (tmp_path / "run").exists(), "nothing should run (not even pretraining) before the error"


@pytest.mark.skipif(torch.cuda.is_available(), reason="8-bit Adam works with a GPU")
def test_8bit_adam_on_a_cpu_machine(tmp_path):
    recipe = write_recipe(tmp_path, pretrain=True)
    line = one_error(*cli("run", recipe, "train.optimizer=adamw8bit"))
    assert line == "error: train.optimizer=adamw8bit needs a GPU; use adamw or adafactor on a CPU machine"
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_run_but_keeps_reusable_stages(tmp_path):
    recipe = write_toy_recipe(tmp_path, pretrain=True, train={"max_steps": 2})
    code, err = cli("run", recipe)
    assert code == 0, err
    run = tmp_path / "run"
    (run / "clip_samples.png").write_bytes(b"an evaluator's output")
    pairs_manifest = (run / "pairs" / "manifest.json").read_text()
    reference_weights = (run / "reference" / FINAL).stat()
    code, err = cli("run", recipe, "--overwrite")
    assert code == 0, err
    assert not (run / "clip_samples.png").exists()
    assert (run / "pairs" / "manifest.json").read_text() == pairs_manifest
    again = (run / "reference" / FINAL).stat()
    assert again.st_mtime_ns == reference_weights.st_mtime_ns  # reused, not retrained


def test_a_fresh_run_never_clears_a_directory_it_did_not_make(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "my_notes.txt").write_text("a user's file")
    recipe = write_toy_recipe(tmp_path, train={"max_steps": 2})
    line = one_error(*cli("run", recipe))
    assert line == (f"error: output_dir {run} is not empty (it holds 'my_notes.txt'); "
                    "pass --overwrite to clear it or choose another output_dir")
    assert (run / "my_notes.txt").read_text() == "a user's file"
