"""Load the prompt list a pair source starts from (``pairs.prompts`` in a recipe).

Sources: a text file (one prompt a line), a .jsonl / .csv / .parquet file with
the prompts in ``column`` (DiffusionDB's metadata parquet calls it
``prompt``), a ``datasets`` directory written by ``save_to_disk``, or a
Hugging Face hub id. Each prompt has its whitespace collapsed to single
spaces, because word counts and de-duplication are on whitespace words and a
newline inside a prompt would break one-line formats downstream; other control
characters (a NUL, an escape) count as whitespace for the same reason.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from prefopt.data.jsonl import jsonl_objects
from prefopt.data.saved_datasets import is_saved_dataset, load_saved_split
from prefopt.errors import DataError, describe_os_error, require
from prefopt.recipe import PromptsConfig

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FILE_SUFFIXES = {".txt", ".jsonl", ".json", ".csv", ".parquet"}
"""A missing path with one of these suffixes is a missing file, never a hub id."""
FORMATS = "a text file, .jsonl, .csv, .parquet, a datasets directory or a hub id"


def _missing_column(where: object, column: str, available: Iterable[str],
                    setting: str = "pairs.prompts.column") -> DataError:
    return DataError(
        f"{where} has no column {column!r} (available: {', '.join(available) or 'none'}); set {setting}"
    )


def _read_text(path: Path, column: str) -> list[Any]:
    """One prompt per line (``\n`` or ``\r\n``); the column does not apply.

    Not ``str.splitlines``: it also splits at Unicode separators (U+2028, U+0085, ...)
    that may sit inside a prompt, which would make one line two prompts.
    """
    return [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]


def read_delimited(path: Path, column: str, delimiter: str = ",", setting: str = "pairs.prompts.column") -> list[Any]:
    """The cells of ``column`` in a CSV (or, with a tab delimiter, TSV) file with a header row.

    ``strict``: a quote left open would otherwise swallow the rest of the file into one
    prompt without a word. A malformed row is one error naming the line it starts on.
    A short row's missing cell is None, as a null is.
    """
    kind = "TSV" if delimiter == "\t" else "CSV"
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter=delimiter, strict=True)
        start = 1
        try:
            header = next(rows, [])
            if column not in header:
                raise _missing_column(path, column, header, setting)
            index, values = header.index(column), []
            start = rows.line_num + 1
            for row in rows:
                if row:  # a blank line
                    values.append(row[index] if index < len(row) else None)
                start = rows.line_num + 1
            return values
        except csv.Error as exc:
            raise DataError(f"{path}:{start}: not valid {kind} ({exc}); check the quoting of that row") from None


def _read_jsonl(path: Path, column: str) -> list[Any]:
    values = []
    for where, record in jsonl_objects(path):
        if column not in record:
            raise _missing_column(where, column, record)
        values.append(record[column])
    return values


def _read_parquet(path: Path, column: str) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if column not in names:
            raise _missing_column(path, column, names)
        return pq.read_table(path, columns=[column]).column(column).to_pylist()
    except pa.ArrowException as exc:  # empty, truncated or not parquet at all
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"prompt file {path} is not a readable parquet file ({reason})") from None


READERS: dict[str, Callable[[Path, str], list[Any]]] = {
    "": _read_text,
    ".txt": _read_text,
    ".jsonl": _read_jsonl,
    ".csv": read_delimited,
    ".parquet": _read_parquet,
}


def _dataset_column(dataset: Any, column: str, where: object) -> list[Any]:
    if column not in dataset.column_names:
        raise _missing_column(where, column, dataset.column_names)
    return dataset[column]


def _read_saved_dataset(path: Path, config: PromptsConfig) -> list[Any]:
    """A ``save_to_disk`` directory: a Dataset, or a DatasetDict from which ``split`` is taken."""
    return _dataset_column(load_saved_split(path, config.split), config.column, path)


def _read_with_load_dataset(source: str, config: PromptsConfig) -> list[Any]:
    """A hub id, or a directory of data files that ``datasets.load_dataset`` understands."""
    datasets = require("datasets", "data")
    try:
        dataset = datasets.load_dataset(source, split=config.split)
    except Exception as exc:  # datasets raises many types; all mean "could not load"
        raise DataError(f"cannot load prompts from {source!r} ({FORMATS}): {type(exc).__name__}: {exc}") from exc
    return _dataset_column(dataset, config.column, source)


@contextmanager
def reading_errors(path: Path) -> Iterator[None]:
    """A prompt file in another encoding, or one that cannot be read: one line naming it."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise DataError(f"prompt file {path} is not UTF-8 text (byte {exc.start}); "
                        "convert it, e.g. with iconv -t UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read prompt file {describe_os_error(exc, path)}") from None


def _read_values(config: PromptsConfig, base_dir: Path | None) -> tuple[list[Any], str]:
    """The raw column values and a name for the source to use in messages."""
    path = Path(config.path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if path.is_dir():
        saved = is_saved_dataset(path)
        values = _read_saved_dataset(path, config) if saved else _read_with_load_dataset(str(path), config)
        return values, str(path)
    if path.is_file():
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"unsupported prompt file {path}: use {FORMATS}")
        with reading_errors(path):
            return reader(path, config.column), str(path)
    if path.suffix.lower() not in FILE_SUFFIXES and HUB_ID.match(config.path):
        return _read_with_load_dataset(config.path, config), config.path
    raise DataError(f"prompt file not found: {path}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_prompts(values: Sequence[Any], source: str, column: str | None = None) -> list[str]:
    """Strings with control characters and whitespace collapsed; empty and non-string cells dropped.

    Nulls are a dataset's missing cells (DiffusionDB has some) and go quietly; numbers or
    lists mean a wrong column or file, so they are counted in a warning.
    """
    odd = [value for value in values if value is not None and not isinstance(value, str)]
    if odd:
        where = f" in column {column!r}" if column else ""
        log.warning("%s: %d of %d values%s are not text (e.g. %s) and were left out",
                    source, len(odd), len(values), where, type(odd[0]).__name__)
    return [text for value in values
            if isinstance(value, str) and (text := " ".join(_CONTROL.sub(" ", value).split()))]


def select_prompts(prompts: list[str], config: PromptsConfig, source: str) -> list[str]:
    """Dedupe (keeping first occurrences), drop short prompts, shuffle, then cap the count."""
    chosen = list(dict.fromkeys(prompts)) if config.dedupe else list(prompts)
    duplicates = len(prompts) - len(chosen)
    long_enough = [p for p in chosen if len(p.split()) >= config.min_words]
    if not long_enough:
        raise DataError(
            f"no prompts left from {source}: {len(prompts)} read, {duplicates} duplicate(s) dropped, "
            f"{len(chosen)} under min_words={config.min_words}"
        )
    if config.shuffle_seed is not None:
        random.Random(config.shuffle_seed).shuffle(long_enough)
    return long_enough[: config.max_count]


def load_prompts(config: PromptsConfig, base_dir: Path | None = None) -> list[str]:
    """The prompts ``config`` names, cleaned and selected.

    A relative ``config.path`` is taken from ``base_dir`` when given (e.g. the
    recipe's directory). Raises DataError, in one line, for a missing file, a
    missing column (listing the available ones) or an empty result.
    """
    values, source = _read_values(config, base_dir)
    return select_prompts(clean_prompts(values, source, config.column), config, source)
