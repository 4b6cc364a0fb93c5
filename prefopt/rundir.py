"""The run directory: what a fresh run, ``--overwrite`` and ``--resume`` may do with it, and ``final/``.

A run directory holds ``recipe.resolved.yaml`` and ``run.json`` (the run's id)
from the start, then ``metrics.jsonl``, ``checkpoints/``, ``final/`` and the
evaluation outputs, and, by default, ``pairs/`` and the pretrained
``reference/``. Every function here runs while the command holds the directory
(:mod:`prefopt.locking`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from prefopt.atomic import replace_dir, write_atomic, write_failure
from prefopt.checksums import new_run_id, run_id_of, seal, verify, write_run_record
from prefopt.errors import PrefoptError, file_errors
from prefopt.locking import is_lock_file

log = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.yaml"
# Fields that change nothing a run computes: they may differ on --resume.
NON_RESULT_FIELDS = {
    "output_dir", "eval", "compare",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "pretrain.train.log_every", "pretrain.train.checkpoint_every", "pretrain.train.keep_checkpoints",
    # Only matters once a step is non-finite; switching stop -> skip is how such a run is rescued.
    "train.on_nonfinite", "pretrain.train.on_nonfinite",
    # How far ahead the data is read, not which data: the order is fixed by the step.
    "train.loader_workers", "train.loader_prefetch", "pretrain.train.loader_workers", "pretrain.train.loader_prefetch",
    # Watching a run (trackers, validation samples) leaves its results bitwise unchanged; EMA does not.
    "train.report_to", "train.validate_every", "train.validation_prompts", "train.validation_samples",
    "train.validation_seed", "pretrain.train.report_to", "pretrain.train.validate_every",
    "pretrain.train.validation_prompts", "pretrain.train.validation_samples", "pretrain.train.validation_seed",
}
# What --overwrite keeps of a run directory (everything else goes): stages that are
# reused when their settings match.
REUSABLE = ("pairs", "reference")
# What a run writes before its first training step. A directory holding only these
# (and REUSABLE) is a run that failed before training: the next plain run takes it over.
BEFORE_FIRST_STEP = (RESOLVED, "run.json", "text_cache")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict (a resolved recipe) as dotted keys; anything but a dict, lists included, is a value."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def first_difference(old: dict, new: dict) -> str | None:
    """The first dotted field that differs and changes results, or None."""
    a, b = flatten(old), flatten(new)
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in NON_RESULT_FIELDS):
            continue
        if a.get(key) != b.get(key):
            return f"{key} ({a.get(key)!r} -> {b.get(key)!r})"
    return None


def read_resolved(run_dir: Path) -> dict[str, Any]:
    """The ``recipe.resolved.yaml`` of a run, or one line naming it when it is unreadable or damaged."""
    path = Path(run_dir) / RESOLVED
    with file_errors(path, "read"):
        raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PrefoptError(f"{path} is damaged ({type(exc).__name__}); start the run again with --overwrite") from None
    if not isinstance(data, dict):
        raise PrefoptError(f"{path} is damaged (not a recipe); start the run again with --overwrite")
    return data


WRITE_PROBE = ".write-test-"


def contents(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` (its lock files aside), sorted; none for a directory not made yet."""
    with file_errors(run_dir, "list"):
        if not run_dir.is_dir():
            return []
        # Every rank of a launch writes and removes its own write probe while the others
        # look: a probe is never a leftover.
        return sorted(p.name for p in run_dir.iterdir()
                      if not is_lock_file(p.name) and not p.name.startswith(WRITE_PROBE))


def prepare_run_dir(run_dir: Path, resolved, resume: bool, overwrite: bool, state=None) -> None:
    """Check what the run may do with ``run_dir``; for a fresh run, clear it and record the recipe and run id.

    ``state``: accelerate's PartialState when the command runs as several processes.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise PrefoptError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    resolved_path = run_dir / RESOLVED
    if resume:
        if not resolved_path.is_file():
            raise PrefoptError(f"--resume: {run_dir} holds no run to resume (no {RESOLVED})")
        difference = first_difference(read_resolved(run_dir), resolved.to_dict())
        if difference:
            raise PrefoptError(f"--resume: the recipe differs from the run's in {difference}; "
                               "resume with the same recipe or start a new output_dir")
        return
    names = contents(run_dir)
    leftover = [n for n in names if n not in REUSABLE]
    never_trained = RESOLVED in names and all(n in BEFORE_FIRST_STEP for n in leftover)
    if RESOLVED in names and not (overwrite or never_trained):
        raise PrefoptError(f"{run_dir} already holds a run; pass --overwrite to replace it or --resume to continue it")
    if leftover and not (overwrite or never_trained):  # never delete what a user put there without being asked
        raise PrefoptError(f"output_dir {run_dir} is not empty (it holds {leftover[0]!r}); "
                           "pass --overwrite to clear it or choose another output_dir")
    if leftover and overwrite:
        refuse_to_clear(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f"{WRITE_PROBE}{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PrefoptError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    # Under `accelerate launch` every process has looked before the main one changes anything.
    if state is not None:
        state.wait_for_everyone()
    if state is None or state.is_main_process:
        for name in leftover:
            target = run_dir / name
            with file_errors(target, "remove"):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        write_run_record(run_dir, new_run_id())
        with file_errors(resolved_path, "write"):
            write_atomic(resolved_path, resolved.to_yaml().encode())
    if state is not None:
        state.wait_for_everyone()


def refuse_to_clear(run_dir: Path) -> None:
    """--overwrite clears a run directory, never the file system's root, a home or the working directory."""
    target = run_dir.resolve()
    precious = {Path("/"), Path.home().resolve(), Path.cwd().resolve()}
    if target in precious or Path.cwd().resolve().is_relative_to(target):
        raise PrefoptError(f"--overwrite would clear {run_dir} ({target}), which holds the working directory, "
                           "a home directory or the root; give the run a directory of its own as output_dir")


def ensure_run_id(run_dir: Path) -> str:
    """The run's id; a run directory that has none (a stage started outside prepare_run_dir) gets one now."""
    run_id = run_id_of(run_dir)
    if run_id is None:
        run_id = new_run_id()
        write_run_record(run_dir, run_id)
    return run_id


def save_final(backbone, run_dir: Path, accelerator) -> Path:
    """Write final/ whole or not at all, sealed with the run's id."""
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            backbone.save(str(tmp))
            seal(tmp, ensure_run_id(run_dir))
            replace_dir(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, PrefoptError) or not isinstance(exc, Exception):
                raise
            # An OSError, or torch and safetensors reporting a full disk as RuntimeError: one line.
            raise PrefoptError(f"could not write {final}: {write_failure(exc, run_dir)}") from exc
    accelerator.wait_for_everyone()
    return final


def reseal_final(run_dir: Path) -> None:
    """Seal final/ again after files were added to it at the end of the run (the model card)."""
    run_id = run_id_of(run_dir)
    if run_id is not None:
        seal(Path(run_dir) / "final", run_id)


def verify_final(final: Path, repair: str) -> None:
    """Refuse a ``final/`` (of a run or of its reference stage) that is damaged or from another run."""
    final = Path(final)
    verify(final, "trained weights", repair, run_id=run_id_of(final.parent))
