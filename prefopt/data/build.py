"""Build a pair dataset from a pair source and a backbone, resumably, and repair a damaged one.

Rows are cut into fixed shards as the source yields them (a list or a stream:
only one shard's rows are held at a time, so importing a large labelled set
does not grow with its size); shard k is written by process k mod P, and each
shard is computed from its own rows and their seeds only. So a build that was
killed and resumed, or split over several processes, gives the same dataset as
one uninterrupted single-process build.

A build also repairs: shards whose sidecar, header or (with ``full``) rows do
not check out are removed and written again, and a damaged manifest is
rewritten from the recipe's settings.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from prefopt.atomic import write_atomic, write_json_atomic
from prefopt.data.integrity import seal
from prefopt.data.pairset import (
    IDENTITY_FIELDS,
    FormatError,
    MADE_WITH,
    MANIFEST,
    METADATA,
    check_identity,
    read_manifest,
    read_sidecar,
    shard_problem,
    shard_stem,
    sidecar_path,
    tensor_path,
    write_manifest,
)
from prefopt.errors import DataError
from prefopt.interfaces import Backbone, PromptPair

log = logging.getLogger(__name__)


def _row_record(index: int, pair: PromptPair) -> dict[str, Any]:
    return {
        "index": index,
        "prompt": pair.prompt,
        "degraded": pair.degraded,
        "seed": int(pair.seed),
        "loser_from": pair.loser_from,
    }


def _sample_in_chunks(backbone: Backbone, prompts: list[str], seeds: list[int], chunk: int):
    import torch

    parts = [
        backbone.sample(prompts[i : i + chunk], seeds[i : i + chunk])
        for i in range(0, len(prompts), chunk)
    ]
    return torch.cat(parts)


def _shard_tensors(backbone: Backbone, pairs: Sequence[PromptPair], sample_batch_size: int, dtype: str):
    """x0_w for every row of one shard, and x0_l for the rows with a loser of their own.

    Given data is encoded, the rest sampled: winners and generated losers of rows
    without given data in one batched call per chunk, c and c- side by side with
    the same seed (Sec. 3.3). Rows whose loser is another row's winner
    (``loser_from``) store no loser.
    """
    import torch

    n = len(pairs)
    winners: list = [None] * n
    losers: list = [None] * n  # stays None where the loser is another row's winner (loser_from)

    def encode_given(side: str, column: list, rows: list[int]) -> None:
        if rows:
            for i, x in zip(rows, backbone.encode_data([getattr(pairs[i], side) for i in rows])):
                column[i] = x

    encode_given("winner", winners, [i for i, p in enumerate(pairs) if p.winner is not None])
    encode_given("loser", losers, [i for i, p in enumerate(pairs) if p.loser is not None and p.loser_from is None])
    to_sample: list[tuple[int, str, str]] = []  # (row, "w"/"l", prompt); c and c- of a row side by side
    for i, pair in enumerate(pairs):
        if pair.winner is None:
            to_sample.append((i, "w", pair.prompt))
        if pair.loser is None and pair.loser_from is None:
            to_sample.append((i, "l", pair.degraded))
    if to_sample:
        sampled = _sample_in_chunks(
            backbone,
            [prompt for _, _, prompt in to_sample],
            [int(pairs[i].seed) for i, _, _ in to_sample],
            sample_batch_size * 2,
        )
        for (i, side, _), x in zip(to_sample, sampled):
            (winners if side == "w" else losers)[i] = x
    stored = getattr(torch, dtype)
    tensors = {"x0_w": torch.stack([w.detach().to("cpu", torch.float32) for w in winners])}
    own = [l for l in losers if l is not None]
    if own:
        tensors["x0_l"] = torch.stack([l.detach().to("cpu", torch.float32) for l in own])
    for key, value in tensors.items():
        if not bool(torch.isfinite(value.to(stored)).all()):
            where = "non-finite values" if not bool(torch.isfinite(value).all()) else f"values outside {dtype}'s range"
            raise DataError(f"the backbone produced {where} in {key}; "
                            + ("check the model" if where.startswith("non") else "set pairs.latent_dtype: float32"))
        tensors[key] = value.to(stored).contiguous()
    loser_rows, next_row = [], 0
    for l in losers:
        loser_rows.append(None if l is None else next_row)
        next_row += l is not None
    return tensors, loser_rows


def _write_shard(directory: Path, index: int, dataset_id: str, tensors: dict, rows: list[dict],
                 loser_rows: list[int | None]) -> None:
    from prefopt.data.rowfile import serialize

    data, header, digests = serialize(tensors, {"dataset_id": dataset_id, "shard": str(index)})
    for i, (row, loser_row) in enumerate(zip(rows, loser_rows)):
        row["loser_row"] = loser_row
        row["x0_w"] = digests["x0_w"][i]
        row["x0_l"] = None if loser_row is None else digests["x0_l"][loser_row]
    write_atomic(tensor_path(directory, index), data)
    # The sidecar goes last: its presence is what marks the shard complete.
    write_json_atomic(sidecar_path(directory, index),
                      seal({"dataset_id": dataset_id, "shard": index, "header": header, "rows": rows}))


def _remove_shard(directory: Path, index: int) -> None:
    sidecar_path(directory, index).unlink(missing_ok=True)  # first: without it the shard is absent
    tensor_path(directory, index).unlink(missing_ok=True)


@contextmanager
def _writing(directory: Path):
    """A full disk or an unwritable pairs.dir: one line naming the dataset, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"could not write pair dataset {directory}: {exc.strerror or exc}") from None


def _existing_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest if it is whole; None if absent or damaged (a damaged one is rewritten)."""
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return read_manifest(directory)
    except FormatError:
        raise  # whole, only older: rebuilding it would destroy another version's data
    except DataError as exc:
        log.warning("%s; writing it again", str(exc).split(";")[0])
        return None


def _prepare_directory(directory: Path, header: dict[str, Any]) -> None:
    """Create the dataset directory, or check that an existing one was made with these settings."""
    (directory / "shards").mkdir(parents=True, exist_ok=True)
    for partial in (directory / "shards").glob(".shard-*.tmp-*"):  # files of a killed build
        partial.unlink(missing_ok=True)
    existing = _existing_manifest(directory)
    if existing is not None:
        check_identity(existing, header["backbone"], directory)
        for key in IDENTITY_FIELDS:
            if existing.get(key) != header.get(key):
                raise DataError(
                    f"pair dataset {directory} was built with different settings ({key} differs); "
                    "delete it or point pairs.dir elsewhere"
                )
        if not existing.get("complete"):
            return
    write_manifest(directory, {**header, "complete": False})


def verify_pair_dataset(directory: str | Path, header: dict[str, Any], full: bool, process_index: int = 0,
                        num_processes: int = 1, wait_for_everyone=lambda: None) -> bool:
    """Is the dataset complete and whole? Damaged shards are removed (to be built again).

    Every process checks the shards it would build (k mod P); ``full`` reads
    every row (``pairs build``), otherwise sidecars and headers only (``run``,
    whose reads check each row anyway). All processes return the same answer.
    """
    directory = Path(directory)
    manifest = _existing_manifest(directory)
    if manifest is None or manifest["dataset_id"] != header["dataset_id"] or not manifest.get("complete"):
        wait_for_everyone()
        return False
    for index, recorded in enumerate(manifest["shards"]):
        if index % num_processes != process_index:
            continue
        problem = shard_problem(directory, index, header["dataset_id"], recorded, full)
        if problem is not None:
            log.warning("%s; building shard %s again", problem, shard_stem(index))
            with _writing(directory):
                _remove_shard(directory, index)
    wait_for_everyone()
    return all(sidecar_path(directory, k).is_file() for k in range(manifest["num_shards"]))


def _chunks(pairs: Iterable[PromptPair], size: int) -> Iterator[list[PromptPair]]:
    rows = iter(pairs)
    while chunk := list(islice(rows, size)):
        yield chunk


def build_pair_dataset(
    directory: str | Path,
    pairs: Iterable[PromptPair],
    backbone: Backbone,
    header: dict[str, Any],
    sample_batch_size: int,
    process_index: int = 0,
    num_processes: int = 1,
    wait_for_everyone=lambda: None,
) -> Path:
    """Write every missing shard this process owns; the main process then seals the dataset.

    ``pairs`` may be a list or any iterable (a stream): it is read once, one
    shard's rows at a time.
    """
    from tqdm.auto import tqdm

    directory = Path(directory)
    dataset_id, shard_size = header["dataset_id"], header["shard_size"]
    if process_index == 0:
        with _writing(directory):
            _prepare_directory(directory, header)
            # Which backbone made the latents, with its settings: enough to decode them later
            # (`prefopt pairs show DIR`) without the recipe. Paths in it may differ between
            # machines, so it is kept out of the manifest that builds are compared by.
            write_json_atomic(directory / MADE_WITH, {"backbone": backbone.name,
                                                       "config": backbone.config.model_dump(mode="json")})
    wait_for_everyone()

    num_rows = num_shards = reused = 0
    total = len(pairs) if isinstance(pairs, Sequence) else None
    with tqdm(total=total, unit="pair", desc=f"building pairs [{process_index}]") as bar:
        for index, chunk in enumerate(_chunks(pairs, shard_size)):
            first = num_rows
            num_rows, num_shards = num_rows + len(chunk), index + 1
            bar.update(len(chunk))
            if index % num_processes != process_index:
                continue
            for i, pair in enumerate(chunk):
                if pair.loser_from is not None and pair.loser_from < 0:
                    raise DataError(f"pair {first + i} takes its loser from row {pair.loser_from}, which does not exist")
            if sidecar_path(directory, index).is_file():
                problem = shard_problem(directory, index, dataset_id, None, full=False)
                if problem is None:
                    reused += 1
                    continue
                log.warning("%s; building shard %s again", problem, shard_stem(index))
            tensors, loser_rows = _shard_tensors(backbone, chunk, sample_batch_size, header["latent_dtype"])
            rows = [_row_record(first + i, pair) for i, pair in enumerate(chunk)]
            with _writing(directory):
                _write_shard(directory, index, dataset_id, tensors, rows, loser_rows)
    if reused:
        log.info("resuming pair build: %d shard(s) already written", reused)
    if num_rows == 0:
        raise DataError("the pair source produced no pairs (check the prompts and the pairs.source settings)")
    wait_for_everyone()

    if process_index == 0:
        with _writing(directory):
            _seal(directory, header, num_rows, num_shards)
    wait_for_everyone()
    return directory


def _seal(directory: Path, header: dict[str, Any], num_rows: int, num_shards: int) -> None:
    """Check every shard's sidecar, write the table and the complete manifest."""
    lines, checksums = [], []
    for index in range(num_shards):
        info = read_sidecar(directory, index, header["dataset_id"])
        for row in info["rows"]:
            if row["loser_from"] is not None and row["loser_from"] >= num_rows:
                raise DataError(f"pair {row['index']} takes its loser from row {row['loser_from']}, "
                                "which does not exist")
            lines.append(json.dumps({**row, "shard": shard_stem(index)}))
        checksums.append(info["sha256"])
    write_atomic(directory / METADATA, ("\n".join(lines) + "\n").encode())
    write_manifest(directory, {**header, "complete": True, "num_rows": num_rows, "num_shards": num_shards,
                               "shards": checksums})


def is_complete(directory: str | Path) -> bool:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return False
    try:
        return bool(read_manifest(Path(directory)).get("complete"))
    except FormatError:
        raise
    except DataError:
        return False
