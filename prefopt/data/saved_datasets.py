"""Directories written by the ``datasets`` library's ``save_to_disk``: recognising one and reading a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefopt.errors import DataError, require

MARKERS = ("dataset_dict.json", "state.json")  # a DatasetDict's, a Dataset's


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` directory (not a folder of data files)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in MARKERS)


def load_saved_split(path: Path, split: str) -> Any:
    """The Dataset saved at ``path``; of a saved DatasetDict, its ``split``, or one line naming the splits."""
    datasets = require("datasets", "data")
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{path} has no split {split!r} (available: {', '.join(dataset)})")
        dataset = dataset[split]
    return dataset
