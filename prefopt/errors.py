"""User-facing errors: one clear line, exit code 2, no traceback unless --debug."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PrefoptError(Exception):
    """A mistake in the user's input or environment, explained in one line."""


class RecipeError(PrefoptError):
    """A recipe file or override that cannot be turned into a valid recipe."""


class PluginError(PrefoptError):
    """A plugin that cannot be loaded, or two plugins that claim one name."""


class DataError(PrefoptError):
    """A pair dataset that is missing, corrupt, or made for another backbone."""


class IntegrityError(PrefoptError):
    """A file prefopt wrote earlier that no longer holds what was written (or belongs to another run)."""


class DirectoryBusyError(PrefoptError):
    """A run directory or pair dataset that another live prefopt process holds."""


class MissingDependencyError(PrefoptError):
    """An optional dependency that the recipe needs is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this recipe needs the optional package {module!r}: "
            f"pip install 'prefopt[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional dependency or fail naming the extra that provides it."""
    import importlib
    import importlib.util

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise MissingDependencyError(module, extra) from exc
        broken: Exception = exc  # installed, but what it imports is missing or of another version
    except Exception as exc:  # noqa: BLE001 - a broken install fails as it likes, e.g. a torchvision built for
        broken = exc  # another torch raises RuntimeError("operator torchvision::nms does not exist") on import
    raise PrefoptError(f"the optional package {module!r} is installed but fails to import "
                       f"({type(broken).__name__}: {' '.join(str(broken).split())[:200]}); install versions of it "
                       f"and of what it imports (torchvision, transformers) that match this environment") from None


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``<file>: <reason>`` for an OSError; ``path`` names the file when the error does not."""
    if exc.errno:
        reason = exc.strerror or os.strerror(exc.errno)
    else:
        reason = str(exc) or type(exc).__name__
    name = exc.filename if exc.filename is not None else path
    if name is None:
        return reason
    if exc.filename2 is not None:
        return f"{os.fsdecode(name)} -> {os.fsdecode(exc.filename2)}: {reason}"
    return f"{os.fsdecode(name)}: {reason}"


@contextmanager
def file_errors(path: str | os.PathLike, doing: str) -> Iterator[None]:
    """Turn an OSError inside the block into one line: ``could not <doing> <file>: <reason>``.

    For writes through an open handle, whose OSError carries no file name (a full
    disk mid-write), ``path`` is the file named.
    """
    try:
        yield
    except OSError as exc:
        raise PrefoptError(f"could not {doing} {describe_os_error(exc, Path(path))}") from exc
