"""JSON Lines files a user gives prefopt: one object per line, every fault one line naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from prefopt.errors import DataError, describe_os_error


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("FILE:LINE", object)`` for every non-blank line of a JSONL file.

    A UTF-8 byte-order mark is accepted; a file in another encoding, a line that
    is not JSON or not an object, and an unreadable file each raise one DataError.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected one JSON object per line")
                if "\\u" in line and not _is_text(record):
                    # JSON may escape half a UTF-16 pair ("\ud800"); Python keeps it as a lone surrogate,
                    # which no tokenizer or file encoding takes: a traceback at the first prompt encoded.
                    raise DataError(f"{where}: holds a lone surrogate escape (\\ud800-\\udfff), which is not text")
                yield where, record
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); "
                        "convert it, e.g. with iconv -t UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read {describe_os_error(exc, path)}") from None


def _is_text(record: dict[str, Any]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
