"""The pair dataset on disk: safetensors shards of x0 data, read row by row, every byte checked.

Layout of a pair dataset directory::

    manifest.json            the dataset's identity (backbone, pair-source settings,
                             shard size, stored dtype) and its id, the hash of them;
                             once complete, the row count and each shard's sidecar
                             checksum. Sealed (it carries its own sha256).
    backbone.json            the backbone plugin and settings that made the data
    shards/shard-00012.safetensors   x0_w for up to shard_size rows, x0_l for the rows
                                     that have a loser of their own; the header's
                                     metadata names the dataset id and the shard
    shards/shard-00012.json          sealed sidecar: the dataset id, the digest of
                                     the tensor file's header, and its rows (prompt,
                                     degraded, seed, loser_from, loser_row and the
                                     digest of each row's x0_w and x0_l bytes)
    metadata.jsonl           the whole table, one row per pair, written at the end
                             (an export for people and tools; prefopt does not read it)

A shard counts only when its sidecar exists, and the sidecar is renamed into
place after its tensor file, so an interrupted build leaves whole shards or none.
Rows with ``loser_from`` (the paper's unpaired variants) store no x0_l: the
reader takes the winner of the named row.

What is checked, and when: the manifest's seal and id, and every sidecar's seal,
id and its checksum in the manifest, when the dataset is opened (small files);
a tensor file's header once per process, on first use; each row's bytes on
every read. So a shard copied from another dataset, an edited prompt, or a
flipped byte in a latent is refused before it is trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefopt.atomic import write_json_atomic
from prefopt.data.integrity import identity_hash, read_sealed, seal
from prefopt.errors import DataError

FORMAT_VERSION = 3  # 3: a row's degraded prompt is stored as "degraded" (was "negative")
MANIFEST = "manifest.json"
MADE_WITH = "backbone.json"
METADATA = "metadata.jsonl"
# Header fields whose hash is the dataset id: what the data was made from.
IDENTITY_FIELDS = ("format", "backbone", "pairs", "shard_size", "latent_dtype")


class FormatError(DataError):
    """A whole pair dataset in another prefopt version's format: never rebuilt in place unasked."""


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def tensor_path(directory: Path, index: int) -> Path:
    return Path(directory) / "shards" / f"{shard_stem(index)}.safetensors"


def sidecar_path(directory: Path, index: int) -> Path:
    return Path(directory) / "shards" / f"{shard_stem(index)}.json"


def repair_hint(directory: Path) -> str:
    return f"repair it with `prefopt pairs build RECIPE` (the recipe that built {directory})"


def resolve_latent_dtype(setting: str, identity: dict[str, Any]) -> str:
    """``auto``: float16 for latent backbones (VAE latents are unit-scale, so float16 keeps
    11 bits of mantissa at half the bytes), float32 for anything else (the toy's points)."""
    if setting != "auto":
        return setting
    return "float16" if identity.get("data_space") == "latent" else "float32"


def dataset_header(identity: dict[str, Any], settings: dict[str, Any], shard_size: int,
                   latent_dtype: str) -> dict[str, Any]:
    """What a dataset is made from, with its id (the hash of it)."""
    header = {"format": FORMAT_VERSION, "backbone": identity, "pairs": settings, "shard_size": shard_size,
              "latent_dtype": latent_dtype}
    return {**header, "dataset_id": identity_hash(header)}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The sealed manifest, checked: its seal, and its id against its own fields."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"no pair dataset at {directory} (missing {MANIFEST}); build it with `prefopt pairs build`")
    manifest = read_sealed(path, repair_hint(directory))
    if manifest.get("format") != FORMAT_VERSION:
        raise FormatError(f"pair dataset {directory} is in format {manifest.get('format')!r} (another prefopt "
                          f"version), this prefopt reads {FORMAT_VERSION}; delete it or point pairs.dir elsewhere")
    if identity_hash({key: manifest.get(key) for key in IDENTITY_FIELDS}) != manifest.get("dataset_id"):
        raise DataError(f"{path} is damaged (its dataset id does not match its settings); {repair_hint(directory)}")
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(directory) / MANIFEST, seal(manifest))


def check_identity(manifest: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    built = manifest.get("backbone", {})
    for key in sorted(set(built) | set(identity)):
        if built.get(key) != identity.get(key):
            raise DataError(
                f"pair dataset {directory} was built for another backbone: "
                f"{key} is {built.get(key)!r} there, {identity.get(key)!r} here"
            )


def read_sidecar(directory: Path, index: int, dataset_id: str) -> dict[str, Any]:
    """A shard's sealed sidecar, refused if damaged or made for another dataset."""
    path = sidecar_path(directory, index)
    if not path.is_file():
        raise DataError(f"{path} is missing; {repair_hint(directory)}")
    info = read_sealed(path, repair_hint(directory))
    if info.get("dataset_id") != dataset_id or info.get("shard") != index:
        raise DataError(f"{path} belongs to another pair dataset (a shard copied from another build); "
                        f"{repair_hint(directory)}")
    return info


def open_shard(directory: Path, index: int, info: dict[str, Any]):
    """The shard's tensor file, header checked against its sidecar and tied to the dataset."""
    from prefopt.data.rowfile import RowFile

    shard = RowFile(tensor_path(directory, index), info["header"], repair_hint(directory)).open()
    if shard.metadata.get("dataset_id") != info["dataset_id"] or shard.metadata.get("shard") != str(index):
        raise shard.damaged("it belongs to another pair dataset")
    return shard


def row_digests(info: dict[str, Any]) -> dict[str, list[str]]:
    """Per tensor, the digest of each stored row, in file order."""
    rows = info["rows"]
    digests = {"x0_w": [row["x0_w"] for row in rows]}
    own_losers = sorted((row["loser_row"], row["x0_l"]) for row in rows if row["loser_row"] is not None)
    if own_losers:
        digests["x0_l"] = [d for _, d in own_losers]
    return digests


def shard_problem(directory: Path, index: int, dataset_id: str, recorded: str | None, full: bool) -> str | None:
    """Why shard ``index`` cannot be used (None: it can). ``full`` also checks every row's bytes."""
    try:
        info = read_sidecar(directory, index, dataset_id)
        if recorded is not None and info["sha256"] != recorded:
            return f"{sidecar_path(directory, index)} is not the shard the manifest records"
        shard = open_shard(directory, index, info)
        try:
            if full:
                shard.verify_all(row_digests(info))
        finally:
            shard.close()
    except DataError as exc:
        return str(exc).split(";")[0]
    return None


class PairDataset:
    """Reads a complete pair dataset row by row; every row's bytes are checked as they are read."""

    def __init__(self, directory: str | Path, identity: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest.get("complete"):
            raise DataError(
                f"pair dataset {self.directory} is incomplete (an interrupted build); "
                "run `prefopt pairs build` again to finish it"
            )
        if identity is not None:
            check_identity(self.manifest, identity, self.directory)
        dataset_id = self.manifest["dataset_id"]
        self.rows: list[dict[str, Any]] = []
        self._where: list[tuple[int, int]] = []  # row -> (shard, row within the shard)
        self._headers: list[str] = []  # each tensor file's header digest
        for index, recorded in enumerate(self.manifest["shards"]):
            info = read_sidecar(self.directory, index, dataset_id)
            if info["sha256"] != recorded:
                raise DataError(f"{sidecar_path(self.directory, index)} is not the shard {MANIFEST} records; "
                                f"{repair_hint(self.directory)}")
            self._where += [(index, offset) for offset in range(len(info["rows"]))]
            self._headers.append(info["header"])
            self.rows += info["rows"]
        if len(self.rows) != self.manifest["num_rows"]:
            raise DataError(f"pair dataset {self.directory} has {len(self.rows)} rows, its manifest says "
                            f"{self.manifest['num_rows']}; {repair_hint(self.directory)}")
        self._shards: dict[int, Any] = {}  # opened lazily: a header check once per process

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn get a copy without open files.
        return {**self.__dict__, "_shards": {}}

    @property
    def bytes_read(self) -> int:
        """Bytes of tensor rows this process has read (headers aside)."""
        return sum(shard.bytes_read for shard in self._shards.values())

    def _shard(self, index: int):
        if index not in self._shards:
            info = {"dataset_id": self.manifest["dataset_id"], "header": self._headers[index]}
            self._shards[index] = open_shard(self.directory, index, info)
        return self._shards[index]

    def _stored(self, row_index: int, side: str) -> tuple[int, str, int, str]:
        """(shard, tensor, row in it, digest) of one side of a row; unpaired losers point at a winner."""
        row = self.rows[row_index]
        if side == "l" and row["loser_row"] is None:
            return self._stored(row["loser_from"], "w")
        shard, offset = self._where[row_index]
        if side == "w":
            return shard, "x0_w", offset, row["x0_w"]
        return shard, "x0_l", row["loser_row"], row["x0_l"]

    def _read(self, row_indices: Sequence[int], side: str):
        import torch

        from prefopt.data.rowfile import row_bytes

        places = [self._stored(i, side) for i in row_indices]
        dtype, shape = self._shard(places[0][0]).row_spec(places[0][1])
        out = torch.empty((len(places), *shape), dtype=dtype)
        buffer = row_bytes(out)  # the rows are read straight into the batch tensor
        for slot, (shard, key, offset, expected) in enumerate(places):
            self._shard(shard).read_into(key, offset, buffer[slot], expected)
        return out

    def batch(self, indices: Sequence[int]):
        """x0_w, x0_l (stacked, in the stored dtype), prompts and degraded prompts for these rows."""
        indices = [int(i) for i in indices]
        return (
            self._read(indices, "w"),
            self._read(indices, "l"),
            [self.rows[i]["prompt"] for i in indices],
            [self.rows[i]["degraded"] for i in indices],
        )
