"""Human-labelled pairs in the Pick-a-Pic layout (what Diffusion-DPO and Diffusion-KTO train on).

A Pick-a-Pic row holds two images of one caption and a label:
``jpg_0``/``jpg_1`` (encoded image bytes), ``label_0`` (1.0: image 0
preferred, 0.0: image 1 preferred, 0.5: tie) and ``caption``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH
from prefopt.data.saved_datasets import is_saved_dataset, load_saved_split
from prefopt.errors import DataError, require
from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt_pairs.common import row_seed

log = logging.getLogger(__name__)

COLUMNS = ("jpg_0", "jpg_1", "label_0", "caption")
TIE = 0.5
LABELS = (0.0, TIE, 1.0)


def _check_columns(available: Sequence[str], where: Path) -> None:
    missing = [c for c in COLUMNS if c not in available]
    if missing:
        raise DataError(
            f"{where} is not in the Pick-a-Pic layout: missing column(s) {', '.join(missing)} "
            f"(available: {', '.join(available)})"
        )


def _parquet_files(path: Path, split: str) -> list[Path]:
    """The parquet file itself, or a directory's shards (those named ``<split>-*`` if any are)."""
    if path.is_file():
        return [path]
    shards = sorted(path.rglob("*.parquet"))
    of_split = [s for s in shards if s.name.startswith(f"{split}-")]
    return of_split or shards


def _parquet_rows(path: Path, split: str) -> Iterator[dict[str, Any]]:
    """Rows of the Pick-a-Pic columns, read in record batches so images never all sit in memory twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _parquet_files(path, split)
    if not files:
        raise DataError(f"no parquet files under {path}")
    for file in files:
        try:
            # pre_buffer off: the pre-buffered ranges stay cached for the reader's lifetime, so memory
            # would grow with the file (every image read so far), not with one record batch.
            reader = pq.ParquetFile(file, pre_buffer=False)
            _check_columns(reader.schema_arrow.names, file)
            batches = reader.iter_batches(columns=list(COLUMNS), batch_size=256)
            for batch in batches:
                yield from batch.to_pylist()
        except pa.ArrowException as exc:  # empty, truncated or damaged part way through
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{file} is not a readable parquet file ({reason})") from None


def _saved_dataset_rows(path: Path, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a ``datasets`` save_to_disk directory, images left undecoded (as bytes)."""
    datasets = require("datasets", "data")
    dataset = load_saved_split(path, split)
    _check_columns(dataset.column_names, path)
    for column in ("jpg_0", "jpg_1"):
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    yield from dataset.select_columns(list(COLUMNS))


def _image_bytes(cell: Any, where: Path) -> bytes:
    """Encoded image bytes from a binary cell or a ``datasets`` Image struct."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if not isinstance(cell, (bytes, bytearray)):
        raise DataError(f"{where}: image cells must hold encoded image bytes, got {type(cell).__name__}")
    return bytes(cell)


class PickAPic(PairSource):
    """Import human-labelled pairs in the Pick-a-Pic layout from parquet or a datasets dir.

    The winner and loser are the encoded image bytes of the preferred and the
    other image (the backbone encodes them); c- is the caption itself, as
    Diffusion-DPO and Diffusion-KTO condition both images on c. The source
    brings its own captions, so the recipe's prompts are ignored. A tie is
    skipped unless ``skip_ties`` is false, when image 0 counts as the winner.
    """

    name: ClassVar[str] = "pickapic"
    needs = frozenset({"images"})

    class Config(PluginConfig):
        """Where the labelled pairs are and which of them to use."""

        path: str = Field(
            description="a .parquet file, a directory of parquet shards, or a datasets save_to_disk directory",
            json_schema_extra=RECIPE_PATH,
        )
        split: str = Field(
            "train", description="split of a saved DatasetDict, or shard name prefix (<split>-*.parquet) in a directory"
        )
        skip_ties: bool = Field(True, description="drop rows with label_0 = 0.5")
        max_count: int | None = Field(None, ge=1, description="stop after this many pairs")

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> Iterator[PromptPair]:
        """The rows as a stream: one record batch of images is in memory at a time, whatever the set's size."""
        if prompts is not None:
            log.warning("pickapic brings its own captions: the %d recipe prompt(s) are ignored", len(prompts))
        path = Path(self.config.path)
        records = self._records(path)  # checks the path now, not at the first row
        return self._rows(records, path, seed)

    def _rows(self, records: Iterator[dict[str, Any]], path: Path, seed: int) -> Iterator[PromptPair]:
        count = ties = 0
        for record in records:
            if self.config.max_count is not None and count >= self.config.max_count:
                break
            label = record["label_0"]
            if label not in LABELS:
                raise DataError(f"{path}: label_0 must be 0, 0.5 or 1, got {label!r}")
            if label == TIE and self.config.skip_ties:
                ties += 1
                continue
            first, second = _image_bytes(record["jpg_0"], path), _image_bytes(record["jpg_1"], path)
            winner, loser = (second, first) if label == 0 else (first, second)
            caption = (record["caption"] or "").strip()
            yield PromptPair(prompt=caption, degraded=caption, seed=row_seed(seed, count), winner=winner, loser=loser)
            count += 1
        if ties:
            log.info("pickapic skipped %d tie(s)", ties)

    def _records(self, path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            raise DataError(f"Pick-a-Pic data not found: {path}")
        if is_saved_dataset(path):
            return _saved_dataset_rows(path, self.config.split)
        return _parquet_rows(path, self.config.split)
