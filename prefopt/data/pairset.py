"""The pair dataset on disk: safetensors shards of x0 latents plus a metadata table.

Layout of a pair dataset directory::

    manifest.json            backbone identity, pair-source settings, shard size,
                             and "complete" once every shard is written
    backbone.json            the backbone plugin and settings that made the latents
    shards/shard-00012.safetensors   x0_w, x0_l for up to shard_size rows
    shards/shard-00012.json          its rows (prompt, negative, seed, loser_from)
                                     and the sha256 of the tensor file
    metadata.jsonl           the whole table, one row per pair, written at the end

A shard counts only when its .json exists, and the .json is renamed into place
after its tensor file, so an interrupted build leaves whole shards or none.
Rows with ``loser_from`` (the paper's unpaired variants) store no x0_l: the
reader takes the winner of the named row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prefopt.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MADE_WITH = "backbone.json"
METADATA = "metadata.jsonl"


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so the file is whole or absent, even on a full disk or a kill."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"no pair dataset at {directory} (missing {MANIFEST}); build it with `prefopt pairs build`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt pair dataset manifest {path}: {exc}") from None


def check_identity(manifest: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    built = manifest.get("backbone", {})
    for key in sorted(set(built) | set(identity)):
        if built.get(key) != identity.get(key):
            raise DataError(
                f"pair dataset {directory} was built for another backbone: "
                f"{key} is {built.get(key)!r} there, {identity.get(key)!r} here"
            )


@dataclass
class ShardInfo:
    index: int
    rows: list[dict[str, Any]]
    checksum: str


def read_shard_info(directory: Path, index: int) -> ShardInfo | None:
    """The shard's metadata if the shard is complete, else None."""
    meta = Path(directory) / "shards" / f"{shard_stem(index)}.json"
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    return ShardInfo(index=index, rows=info["rows"], checksum=info["sha256"])


class PairDataset:
    """Reads a complete pair dataset lazily, shard by shard, verifying checksums."""

    def __init__(self, directory: str | Path, identity: dict[str, Any] | None = None,
                 cache_bytes: int = 1 << 30):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            raise DataError(
                f"pair dataset {self.directory} is incomplete (an interrupted build); "
                "run `prefopt pairs build` again to finish it"
            )
        if identity is not None:
            check_identity(self.manifest, identity, self.directory)
        self.shards: list[ShardInfo] = []
        for index in range(self.manifest["num_shards"]):
            info = read_shard_info(self.directory, index)
            if info is None:
                raise DataError(f"pair dataset {self.directory}: shard {shard_stem(index)} is missing")
            self.shards.append(info)
        self.rows = [row for shard in self.shards for row in shard.rows]
        self._location = [(s.index, i) for s in self.shards for i in range(len(s.rows))]
        # Shards are loaded whole and kept in a cache bounded in bytes, so the rows of a
        # batch are plain indexing; each shard's checksum is verified once, not per load.
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def _tensors(self, shard_index: int) -> dict:
        if shard_index in self._cache:
            self._cache.move_to_end(shard_index)
            return self._cache[shard_index]
        from safetensors.torch import load_file

        path = self.directory / "shards" / f"{shard_stem(shard_index)}.safetensors"
        if not path.is_file():
            raise DataError(f"pair dataset {self.directory}: {path.name} is missing")
        if shard_index not in self._verified:
            if sha256_of(path) != self.shards[shard_index].checksum:
                raise DataError(f"pair dataset {self.directory}: {path.name} is corrupt (checksum mismatch); rebuild it")
            self._verified.add(shard_index)
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise DataError(f"pair dataset {self.directory}: cannot read {path.name}: {exc}") from None
        self._cache[shard_index] = tensors
        while len(self._cache) > 1 and sum(
            t.numel() * t.element_size() for shard in self._cache.values() for t in shard.values()
        ) > self._cache_bytes:
            self._cache.popitem(last=False)
        return tensors

    def _row(self, row_index: int, key: str):
        shard_index, offset = self._location[row_index]
        return self._tensors(shard_index)[key][offset]

    def _winner(self, row_index: int):
        return self._row(row_index, "x0_w")

    def _loser(self, row_index: int):
        row = self.rows[row_index]
        if row.get("loser_from") is not None:
            return self._winner(row["loser_from"])
        return self._row(row_index, "x0_l")

    def batch(self, indices: Sequence[int]):
        """x0_w, x0_l (stacked tensors), prompts and negatives for these rows."""
        import torch

        indices = [int(i) for i in indices]
        return (
            torch.stack([self._winner(i) for i in indices]),
            torch.stack([self._loser(i) for i in indices]),
            [self.rows[i]["prompt"] for i in indices],
            [self.rows[i]["negative"] for i in indices],
        )
