"""Build a pair dataset from a pair source and a backbone, resumably.

Rows are cut into fixed shards; shard k is written by process k mod P, and each
shard is computed from its own rows and their seeds only. So a build that was
killed and resumed, or split over several processes, gives the same dataset as
one uninterrupted single-process build.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from prefopt.data.pairset import (
    MADE_WITH,
    FORMAT_VERSION,
    MANIFEST,
    METADATA,
    check_identity,
    read_manifest,
    read_shard_info,
    sha256_of,
    shard_stem,
    write_atomic,
    write_json_atomic,
)
from prefopt.errors import DataError
from prefopt.interfaces import Backbone, PromptPair

log = logging.getLogger(__name__)


def _row_record(index: int, pair: PromptPair) -> dict[str, Any]:
    return {
        "index": index,
        "prompt": pair.prompt,
        "negative": pair.negative,
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


def _shard_tensors(backbone: Backbone, pairs: Sequence[PromptPair], sample_batch_size: int):
    """x0_w and x0_l for one shard: given data encoded, the rest sampled.

    Winners and generated losers of rows without given data are sampled in one
    batched call per chunk: c and c- side by side with the same seed (Sec. 3.3).
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
            to_sample.append((i, "l", pair.negative))
    if to_sample:
        sampled = _sample_in_chunks(
            backbone,
            [prompt for _, _, prompt in to_sample],
            [int(pairs[i].seed) for i, _, _ in to_sample],
            sample_batch_size * 2,
        )
        for (i, side, _), x in zip(to_sample, sampled):
            (winners if side == "w" else losers)[i] = x
    x0_w = torch.stack([w.detach().to("cpu", torch.float32) for w in winners]).contiguous()
    # Rows whose loser lives elsewhere get zeros, which the reader never returns.
    x0_l = torch.stack(
        [(l if l is not None else torch.zeros_like(x0_w[0])).detach().to("cpu", torch.float32) for l in losers]
    ).contiguous()
    return x0_w, x0_l


def _write_shard(directory: Path, index: int, x0_w, x0_l, rows: list[dict]) -> None:
    from safetensors.torch import save

    tensor_path = directory / "shards" / f"{shard_stem(index)}.safetensors"
    write_atomic(tensor_path, save({"x0_w": x0_w, "x0_l": x0_l}))
    # The .json goes last: its presence is what marks the shard complete.
    write_json_atomic(tensor_path.with_suffix(".json"), {"rows": rows, "sha256": sha256_of(tensor_path)})


@contextmanager
def _writing(directory: Path):
    """A full disk or an unwritable pairs.dir: one line naming the dataset, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise DataError(f"could not write pair dataset {directory}: {exc.strerror or exc}") from None


def _prepare_directory(directory: Path, header: dict[str, Any]) -> None:
    """Create the dataset directory, or check that an existing one matches."""
    (directory / "shards").mkdir(parents=True, exist_ok=True)
    for partial in (directory / "shards").glob(".shard-*.tmp-*"):  # files of a killed build
        partial.unlink(missing_ok=True)
    if (directory / MANIFEST).is_file():
        existing = read_manifest(directory)
        check_identity(existing, header["backbone"], directory)
        for key in ("pairs", "num_rows", "shard_size"):
            if existing.get(key) != header.get(key):
                raise DataError(
                    f"pair dataset {directory} was built with different settings ({key} differs); "
                    "delete it or point pairs.dir elsewhere"
                )
        return
    write_json_atomic(directory / MANIFEST, {**header, "complete": False})


def build_pair_dataset(
    directory: str | Path,
    pairs: Sequence[PromptPair],
    backbone: Backbone,
    settings: dict[str, Any],
    shard_size: int,
    sample_batch_size: int,
    process_index: int = 0,
    num_processes: int = 1,
    wait_for_everyone=lambda: None,
) -> Path:
    """Write every shard this process owns; the main process then seals the dataset."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    if not pairs:
        raise DataError("the pair source produced no pairs (check the prompts and the pairs.source settings)")
    for i, pair in enumerate(pairs):
        if pair.loser_from is not None and not 0 <= pair.loser_from < len(pairs):
            raise DataError(f"pair {i} takes its loser from row {pair.loser_from}, which does not exist")
    num_shards = (len(pairs) + shard_size - 1) // shard_size
    header = {
        "format": FORMAT_VERSION,
        "backbone": backbone.identity(),
        "pairs": settings,
        "num_rows": len(pairs),
        "num_shards": num_shards,
        "shard_size": shard_size,
    }
    if process_index == 0:
        with _writing(directory):
            _prepare_directory(directory, header)
            # Which backbone made the latents, with its settings: enough to decode them later
            # (`prefopt pairs show DIR`) without the recipe. Paths in it may differ between
            # machines, so it is kept out of the manifest that builds are compared by.
            write_json_atomic(directory / MADE_WITH, {"backbone": backbone.name,
                                                       "config": backbone.config.model_dump(mode="json")})
    wait_for_everyone()

    mine = [k for k in range(num_shards) if k % num_processes == process_index]
    todo = [k for k in mine if read_shard_info(directory, k) is None]
    if len(todo) < len(mine):
        log.info("resuming pair build: %d of %d shards already written", len(mine) - len(todo), len(mine))
    rows_todo = sum(len(pairs[k * shard_size : (k + 1) * shard_size]) for k in todo)
    with tqdm(total=rows_todo, unit="pair", desc=f"building pairs [{process_index}]", disable=not todo) as bar:
        for k in todo:
            chunk = list(pairs[k * shard_size : (k + 1) * shard_size])
            x0_w, x0_l = _shard_tensors(backbone, chunk, sample_batch_size)
            rows = [_row_record(k * shard_size + i, pair) for i, pair in enumerate(chunk)]
            with _writing(directory):
                _write_shard(directory, k, x0_w, x0_l, rows)
            bar.update(len(chunk))
    wait_for_everyone()

    if process_index == 0:
        with _writing(directory):
            _seal(directory, header)
    wait_for_everyone()
    return directory


def _seal(directory: Path, header: dict[str, Any]) -> None:
    import json

    lines = []
    for k in range(header["num_shards"]):
        info = read_shard_info(directory, k)
        if info is None:
            raise DataError(f"pair build finished with shard {shard_stem(k)} missing in {directory}")
        for row in info.rows:
            lines.append(json.dumps({**row, "shard": shard_stem(k), "sha256": info.checksum}))
    write_atomic(directory / METADATA, ("\n".join(lines) + "\n").encode())
    write_json_atomic(directory / MANIFEST, {**header, "complete": True})


def is_complete(directory: str | Path) -> bool:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return False
    try:
        return bool(read_manifest(Path(directory)).get("complete"))
    except DataError:
        return False
