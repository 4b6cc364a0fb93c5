"""Checksums for the files prefopt writes and later trusts (pair datasets, the text cache).

Two kinds of protection, both sha256:

- a *sealed* JSON file carries the checksum of its own content (``"sha256"``),
  so an edited row, a cut file or a flipped byte in it is refused on reading;
- tensor rows are covered by a digest per row, recorded in a sealed sidecar,
  so a random batch can verify exactly the bytes it reads (see ``rowfile``).

This guards against damage (disks, copies, careless edits), not against someone
who recomputes every checksum on purpose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefopt.errors import DataError

SEAL = "sha256"
DIGEST_CHARS = 32  # 128 bits of sha256: collisions by accident are out of reach


def digest(data) -> str:
    """The digest of a bytes-like object (a row, a header)."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def canonical(obj: Any) -> bytes:
    """One byte string per JSON value, whatever the key order or spacing it was written with."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def identity_hash(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the checksum of its content added."""
    body = {key: value for key, value in obj.items() if key != SEAL}
    return {**body, SEAL: identity_hash(body)}


def read_sealed(path: Path, repair: str) -> dict[str, Any]:
    """A sealed JSON file, or a DataError naming it (damaged, unreadable) and the repair."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; {repair}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is damaged (not valid JSON); {repair}") from None
    if not isinstance(obj, dict) or SEAL not in obj:
        raise DataError(f"{path} is damaged (no checksum); {repair}")
    if seal(obj)[SEAL] != obj[SEAL]:
        raise DataError(f"{path} is damaged (its content does not match its checksum); {repair}")
    return obj
