"""One command at a time in a directory: run directories and pair datasets being built.

A directory is held with ``flock`` on lock files inside it, for as long as the
command runs. The kernel drops a flock when its holder dies, however it dies
(``kill -9`` included), so a lock is never left behind. Two files take part:

* ``.prefopt.lock`` -- held exclusively by the command's main process. A second
  command fails to take it and is refused with one line naming the holder,
  whose pid and command line the holder writes into the file.
* ``.prefopt.lock.ranks`` -- held shared by every process of the command (all
  ranks of an ``accelerate launch``). Before joining, the main process checks
  that no process of an earlier command still holds it: when rank 0 of a job
  dies, its other ranks may live on for a while (writing a checkpoint, say),
  and a new command must not clear the directory under them.

The lock files are never deleted (a deleted and re-created lock file would let
two holders in) and never count as content of the directory. Each must be a
plain file of the directory's own: a lock name that is a symbolic link or a
second hard link of another file is refused, never written through.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from prefopt.errors import DirectoryBusyError, PrefoptError, describe_os_error, file_errors

LOCK = ".prefopt.lock"
RANKS = ".prefopt.lock.ranks"
LOCK_FILES = (LOCK, RANKS)

# Directories this process holds: resolved path -> [open lock handles, nesting depth].
# A nested hold of the same directory (compare -> run -> pairs) reuses the outer one:
# a second flock on a new open file would conflict with this process's own lock.
_held: dict[str, list] = {}


def is_lock_file(name: str) -> bool:
    return name in LOCK_FILES


def _holder_record() -> str:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command[:300]})


def _read_holder(handle: IO[str]) -> dict | None:
    """The holder's record, if it is there and names a live process (or one on another host)."""
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
        pid, host = int(record["pid"]), record.get("host")
        str(record["command"])
    except (ValueError, KeyError, TypeError):
        return None
    if host in (None, socket.gethostname()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # a record left by an earlier holder, not yet replaced
            return None
        except PermissionError:  # alive, another user's
            pass
    return record


def _describe_holder(handle: IO[str]) -> str:
    # The new holder writes its record just after it takes the lock: give it a moment.
    for _ in range(40):
        record = _read_holder(handle)
        if record is not None:
            break
        time.sleep(0.025)
    else:
        return "another prefopt process"
    host = record.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {record['pid']}{where}: {record['command']}"


def _try_flock(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open(path: Path) -> IO[str]:
    """Open (creating it) a lock file that is a plain file of the directory's own, or refuse in one line.

    The holder record is written into the lock file, so whatever the name leads to would be
    overwritten: a symbolic link planted there (pointing anywhere) is never followed
    (``O_NOFOLLOW``), and a file with a second hard link (the same file under another name,
    possibly outside the directory) or anything but a regular file (a FIFO would block) is
    refused, before a byte is written.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    repair = f"prefopt writes only lock files of its own: remove it (rm {path}) and run the command again"
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symbolic link
            raise PrefoptError(f"lock file {path} is a symbolic link; {repair}") from None
        raise PrefoptError(f"could not open the lock file {describe_os_error(exc, path)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrefoptError(f"lock file {path} is not a regular file; {repair}")
        if info.st_nlink != 1:
            raise PrefoptError(f"lock file {path} has other hard links (it is also another file); {repair}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a+", encoding="utf-8")


def _acquire_main(directory: Path, what: str) -> list[IO[str]]:
    lock = _open(directory / LOCK)
    try:
        ranks = _open(directory / RANKS)
    except BaseException:
        lock.close()
        raise
    try:
        if not _try_flock(lock, fcntl.LOCK_EX):
            raise DirectoryBusyError(f"{what} {directory} is in use by another prefopt command "
                                     f"({_describe_holder(lock)}); wait for it to end or stop it")
        if not _try_flock(ranks, fcntl.LOCK_EX):
            raise DirectoryBusyError(f"{what} {directory} is still in use by processes of an earlier command "
                                     f"({_describe_holder(lock)}); wait for them to end or stop them")
        with file_errors(directory / LOCK, "write"):
            lock.seek(0)
            lock.truncate()
            lock.write(_holder_record())
            lock.flush()
        # Downgrade to the shared hold every rank takes; no other command can come
        # between the two steps, because this process holds LOCK exclusively.
        fcntl.flock(ranks.fileno(), fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        ranks.close()
        raise
    return [lock, ranks]


def _join(directory: Path, what: str) -> list[IO[str]]:
    ranks = _open(directory / RANKS)
    if not _try_flock(ranks, fcntl.LOCK_SH):  # cannot happen while our main process holds LOCK
        ranks.close()
        raise DirectoryBusyError(f"{what} {directory} is in use by another prefopt command")
    return [ranks]


@contextmanager
def hold(directory: str | os.PathLike, what: str = "run directory", state=None) -> Iterator[Path]:
    """Hold ``directory`` (created if missing) for the block, or refuse in one line if another command does.

    ``state`` is accelerate's ``PartialState`` when the command runs as several
    processes: its main process takes the exclusive lock, and the others join
    after a barrier. Without it, this process is the whole command.
    """
    directory = Path(directory)
    if os.path.lexists(directory) and not directory.is_dir():
        raise PrefoptError(f"{'output_dir' if what == 'run directory' else what} {directory} is a file, "
                           "not a directory; choose another path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a path under a file, a read-only or full disk
        reason = exc.strerror or str(exc)
        if what == "run directory":
            raise PrefoptError(f"output_dir {directory} is not writable: {reason}") from None
        raise PrefoptError(f"could not write {what} {directory}: {reason}") from None
    key = str(directory.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield directory
        finally:
            _held[key][1] -= 1
        return
    main = state is None or state.is_main_process
    handles: list[IO[str]] = []
    try:
        if main:
            handles = _acquire_main(directory, what)
        if state is not None:
            # Rank 0's refusal ends the launch; the other ranks join only a hold it won.
            state.wait_for_everyone()
            if not main:
                handles = _join(directory, what)
        _held[key] = [handles, 1]
        yield directory
    finally:
        if _held.get(key, [None])[0] is handles:
            del _held[key]
        for handle in handles:
            handle.close()  # closing the last descriptor releases the flock

