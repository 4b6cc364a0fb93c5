"""Checkpoints that are whole or absent.

accelerate writes the model, optimizer, LR scheduler, grad scaler and RNG
states into a temporary directory; we add ``trainer_state.json`` (step, skips)
and rename the directory into place. A kill at any moment leaves either the
previous checkpoints untouched or one more complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from prefopt.errors import PrefoptError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(run_dir: Path, which: str) -> Path:
    checkpoints = list_checkpoints(run_dir)
    if which == "latest":
        if not checkpoints:
            raise PrefoptError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)}")
        return checkpoints[-1]
    candidate = Path(which)
    if not candidate.is_absolute():
        candidate = checkpoint_dir(run_dir) / which
    if not (candidate / STATE_FILE).is_file():
        names = ", ".join(p.name for p in checkpoints) or "none"
        raise PrefoptError(f"--resume: no checkpoint {which!r} (available: {names})")
    return candidate


def _discard(path: Path) -> None:
    """Remove a checkpoint so that a kill midway never leaves a half-deleted ``step-*``.

    The rename is atomic: the directory is whole under its name or gone from it.
    """
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(run_dir: Path) -> None:
    """Delete what a run killed while saving (``.tmp-step-*``) or pruning (``.trash-step-*``) left."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for stale in root.glob(".t*-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
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
            if accelerator.is_main_process:
                (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
                _fsync_tree(tmp)
                if final.exists():
                    _discard(final)
                os.replace(tmp, final)
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        raise PrefoptError(f"could not write checkpoint {final}: {exc.strerror or exc}") from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep]:
            try:
                _discard(old)
            except OSError as exc:
                log.warning("could not remove old checkpoint %s: %s", old, exc)
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
