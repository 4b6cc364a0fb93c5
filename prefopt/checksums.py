"""Checksums of the directories a run writes and later trusts: checkpoints, ``final/``, ``reference/final/``.

When such a directory is complete, :func:`seal` writes ``integrity.json`` into
it: the sha256 of every file and the id of the run that wrote it. Before
prefopt reads the directory again, :func:`verify` checks every file against the
record (a file missing, changed or added is refused) and the run id against the
run that reads it, so a damaged file or another run's checkpoint is never used
silently. A file is hashed once per process (keyed by its inode, size and
modification time); reading it again costs nothing.

Each run directory has ``run.json`` with a random run id, written when the
run starts; its checkpoints and ``final/`` carry that id.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from prefopt.errors import IntegrityError, PrefoptError, file_errors

RECORD = "integrity.json"
RUN_RECORD = "run.json"

# (resolved path, inode, size, mtime_ns) -> sha256 of the files this process has hashed.
_digests: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    with file_errors(path, "read"), open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            _digests[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _digests[key]


def _files(directory: Path) -> list[str]:
    with file_errors(directory, "list"):
        return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                      if not p.is_dir() and p.name != RECORD)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    from prefopt.atomic import write_json_atomic

    with file_errors(path, "write"):
        write_json_atomic(path, record)


def seal(directory: Path, run_id: str) -> None:
    """Record the sha256 of every file in ``directory`` and the run that made it."""
    directory = Path(directory)
    record = {"run_id": run_id, "files": {name: sha256_file(directory / name) for name in _files(directory)}}
    _write_json(directory / RECORD, record)


def read_json(path: Path, what: str, repair: str | None = None) -> Any:
    """A JSON file prefopt wrote, or one line naming it (and ``repair``, the way back) when it cannot be parsed."""
    with file_errors(path, "read"):
        raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        how = f"; {repair}" if repair else ""
        raise IntegrityError(f"{what} {path} is damaged (not JSON: {str(exc)[:80]}){how}") from None


def verify(directory: Path, what: str, repair: str, run_id: str | None = None) -> None:
    """Refuse ``directory`` unless every file matches its integrity record (and ``run_id``, when given).

    ``repair`` is the sentence that says how to get a good copy back; it ends every refusal.
    """
    directory = Path(directory)
    path = directory / RECORD
    if not path.is_file():
        raise IntegrityError(f"{what} {directory} has no {RECORD} (it was not written whole by prefopt); {repair}")
    record = read_json(path, f"{what} record", repair)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise IntegrityError(f"{what} record {path} is damaged; {repair}")
    if run_id is not None and record.get("run_id") != run_id:
        raise IntegrityError(f"{what} {directory} belongs to another run (run id {record.get('run_id')!r}, "
                             f"this run's is {run_id!r}); {repair}")
    present = _files(directory)
    extra = sorted(set(present) - set(files))
    if extra:
        raise IntegrityError(f"{what} {directory} holds {extra[0]!r}, which prefopt did not write there; {repair}")
    for name, digest in sorted(files.items()):
        file = directory / name
        if not file.is_file():
            raise IntegrityError(f"{what} file {file} is missing; {repair}")
        if sha256_file(file) != digest:
            raise IntegrityError(f"{what} file {file} is damaged, or its line in {RECORD} is (their sha256 "
                                 f"differ); {repair}")


def verify_pretrained(pretrained: str | None) -> None:
    """Check a local pretrained directory that prefopt sealed (a run's ``final/``) before it is loaded.

    A run's final/ is meant to be started from; its integrity record sits beside the weights, so a
    flipped byte is refused here rather than trained on. Hub ids and directories prefopt did not
    write (no record) load as they are.
    """
    if not pretrained:
        return
    directory = Path(pretrained).expanduser()
    if (directory / RECORD).is_file():
        verify(directory, "pretrained weights", f"copy them again from the run's final/, or delete "
               f"{directory / RECORD} to use the directory as it is")


def new_run_id() -> str:
    return uuid.uuid4().hex


def write_run_record(run_dir: Path, run_id: str) -> None:
    _write_json(Path(run_dir) / RUN_RECORD, {"run_id": run_id})


def run_id_of(run_dir: Path) -> str | None:
    """The id of the run in ``run_dir``, or None where no run has started."""
    path = Path(run_dir) / RUN_RECORD
    if not path.exists():
        return None
    record = read_json(path, "run record")
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        raise PrefoptError(f"run record {path} is damaged; start the run again with --overwrite")
    return record["run_id"]
