"""Files and directories written whole or not at all, even on a full disk or a kill.

A file is written to a temporary name beside it, flushed to disk and renamed
over the target; a directory (a checkpoint, ``final/``) is filled under a
temporary name, every file fsynced, and renamed into place. A rename within
one file system is atomic, so a reader finds the old version or the new one,
never a cut one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from prefopt.errors import describe_os_error


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so the file is whole or absent, even on a full disk or a kill."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # The temporary name is predictable: whatever sits there (a leftover, or a link someone planted to
        # have this write land elsewhere) is removed, and the file is created anew, never opened through a link.
        tmp.unlink(missing_ok=True)
        with open(tmp, "xb") as handle:  # "x": O_CREAT | O_EXCL, which never follows a link
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only file system refuses even this: the write's own error is the one to report
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)  # name the file being written, not its temporary (a full disk names none)
        raise


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def strict_json(obj: Any, **options: Any) -> str:
    """JSON every parser reads: a NaN or infinity (a metric over no samples, say) is written as null."""
    return json.dumps(_finite(obj), allow_nan=False, **options)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` to disk, so a rename of it never publishes unwritten data."""
    for path in Path(directory).rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def discard_dir(path: Path) -> None:
    """Remove a directory so that a kill midway never leaves it half-deleted under its name.

    The rename is atomic: the directory is whole under its name or gone from it;
    what a kill leaves is ``.trash-<name>``, which nothing reads.
    """
    path = Path(path)
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished directory ``tmp`` in the place of ``target`` (which may not exist yet)."""
    fsync_tree(tmp)
    if Path(target).exists():
        discard_dir(target)
    os.replace(tmp, target)


def disk_nearly_full(directory: Path) -> bool:
    """Whether the file system holding ``directory`` has less than 1 MiB free."""
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def write_failure(exc: BaseException, directory: Path | None = None) -> str:
    """One line for a failed save; torch and safetensors report a full disk in their own words."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if directory is not None and disk_nearly_full(directory):
        reason = f"No space left on device ({reason})"
    return reason
