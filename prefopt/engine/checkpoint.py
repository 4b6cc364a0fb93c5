"""Checkpoints that are whole or absent, checksummed, and tied to their run.

accelerate writes the model, optimizer, LR scheduler, grad scaler and RNG
states into a temporary directory; we add ``trainer_state.json`` (step, skips,
run id) and ``integrity.json`` (the sha256 of every file and the run id), and
rename the directory into place. A kill at any moment leaves either the
previous checkpoints untouched or one more complete checkpoint. A checkpoint
is verified file by file before it is loaded, and only the run that wrote it
may resume from it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from prefopt.atomic import discard_dir, replace_dir, write_failure
from prefopt.checksums import read_json, run_id_of, seal, verify
from prefopt.errors import PrefoptError, file_errors
from prefopt.rundir import ensure_run_id

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    with file_errors(root, "list"):
        if not root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in root.iterdir()
                 if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def _named(run_dir: Path, which: str) -> Path:
    """``step-N`` or a path to one, which must lie in this run's checkpoints/ directory."""
    root = checkpoint_dir(run_dir)
    candidate = Path(which) if ("/" in which or os.sep in which) else root / which
    try:
        inside = candidate.resolve().parent == root.resolve()
    except (OSError, RuntimeError):
        inside = False
    if not inside or not _NAME.match(candidate.name):
        raise PrefoptError(f"--checkpoint {which!r}: name a checkpoint of this run, step-NNNNNNNN in {root}")
    return candidate


def find_checkpoint(run_dir: Path, which: str, command: str = "prefopt run RECIPE") -> Path:
    """The checkpoint to resume from ('latest' or a name), verified to be whole and this run's.

    ``command`` is how the user started the run; refusals end with the command that recovers.
    """
    checkpoints = list_checkpoints(run_dir)
    if which == "latest":
        if not checkpoints:
            raise PrefoptError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)}")
        chosen = checkpoints[-1]
    else:
        chosen = _named(run_dir, which)
        if not (chosen / STATE_FILE).is_file():
            names = ", ".join(p.name for p in checkpoints) or "none"
            raise PrefoptError(f"--resume: no checkpoint {which!r} (available: {names})")
    earlier = [p.name for p in checkpoints if p.name < chosen.name]
    then = f"from {earlier[-1]}" if earlier else "from step 0"
    repair = f"delete it (rm -r {chosen}) and run `{command} --resume`: training resumes {then}"
    run_id = run_id_of(run_dir)
    if run_id is None:
        raise PrefoptError(f"--resume: {run_dir} has no run.json, so no checkpoint can be tied to it; "
                           f"start the run again with `{command} --overwrite`")
    verify(chosen, "checkpoint", repair, run_id=run_id)
    return chosen


def remove_leftovers(run_dir: Path) -> None:
    """Delete what a run killed while saving (``.tmp-step-*``) or pruning (``.trash-step-*``) left."""
    from prefopt.rundir import remove

    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for stale in root.glob(".t*-step-*"):
            remove(stale)  # a link goes as a link; a removal that fails is one line, never written through


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    import json

    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            remove_leftovers(run_dir)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
            # Every process has written its RNG state before the directory is sealed and renamed.
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                run_id = ensure_run_id(run_dir)
                state = {**state, "step": step, "run_id": run_id}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
                seal(tmp, run_id)
                replace_dir(tmp, final)
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    except PrefoptError as exc:
        raise PrefoptError(f"could not write checkpoint {final}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - torch and safetensors report a full disk as RuntimeError
        raise PrefoptError(f"could not write checkpoint {final}: {write_failure(exc, root)}") from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep]:
            try:
                discard_dir(old)
            except OSError as exc:
                log.warning("could not remove old checkpoint %s: %s", old, exc)
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    """Load a checkpoint that :func:`find_checkpoint` verified; returns its trainer state."""
    state = read_json(Path(path) / STATE_FILE, "checkpoint state")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise PrefoptError(f"checkpoint state {Path(path) / STATE_FILE} has no valid step")
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - a checkpoint of another model shape: torch raises RuntimeError
        raise PrefoptError(f"could not load checkpoint {path}: {write_failure(exc)}") from exc
    return state
