"""Prompt embeddings computed once before training and read from disk after.

With ``train.text_cache: true`` every unique prompt of the pair dataset (c and
c-) is encoded once, in parts of ``PART_SIZE`` prompts written atomically as
safetensors; a resumed or restarted run reuses finished parts. Training then
reads embeddings instead of running the text encoder (for SANA's Gemma2 that
is ~1.2 TFLOP per prompt saved each time a prompt is seen again).

Layout, one subdirectory per prompt set (named by the set's hash)::

    <set>/part-00000.safetensors   embeddings of up to PART_SIZE prompts; the
                                   header's metadata names the prompt set
    <set>/part-00000.json          sealed sidecar: the prompt set, the digest of
                                   the tensor file's header and of every row
    <set>/index.json               sealed: the prompts, and each part's sidecar
                                   checksum (written last: the cache is complete)

Everything is tied to its prompt set and checked as in a pair dataset (see
``prefopt.data.pairset``): sidecars and headers when the cache is opened, each
embedding's bytes on every read. Parts that do not check out at the start of a
run are encoded again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from prefopt.data.integrity import identity_hash, read_sealed, seal
from prefopt.atomic import write_atomic, write_json_atomic
from prefopt.data.rowfile import RowFile, row_bytes, serialize
from prefopt.errors import DataError

log = logging.getLogger(__name__)

PART_SIZE = 4096
INDEX = "index.json"
REPAIR = "delete it and resume the run (`prefopt run RECIPE --resume`), which encodes the part again"


def _part_path(directory: Path, part: int) -> Path:
    return directory / f"part-{part:05d}.safetensors"


def _sidecar_path(directory: Path, part: int) -> Path:
    return directory / f"part-{part:05d}.json"


def _read_part(directory: Path, part: int, prompt_set: str, recorded: str | None) -> tuple[RowFile, dict]:
    """A part's tensor file (header checked) and its row digests; DataError if it does not check out."""
    sidecar = read_sealed(_sidecar_path(directory, part), REPAIR)
    if sidecar.get("prompt_set") != prompt_set or sidecar.get("part") != part:
        raise DataError(f"{_sidecar_path(directory, part)} belongs to another prompt set; {REPAIR}")
    if recorded is not None and sidecar["sha256"] != recorded:
        raise DataError(f"{_sidecar_path(directory, part)} is not the part {INDEX} records; {REPAIR}")
    file = RowFile(_part_path(directory, part), sidecar["header"], REPAIR).open()
    if file.metadata.get("prompt_set") != prompt_set or file.metadata.get("part") != str(part):
        raise file.damaged("it belongs to another prompt set")
    return file, sidecar


def _read_index(directory: Path, prompt_set: str, prompts: list[str]) -> dict[str, Any] | None:
    """The index if it is whole and lists exactly these prompts, else None (the cache is rebuilt)."""
    path = directory / INDEX
    if not path.is_file():
        return None
    try:
        index = read_sealed(path, REPAIR)
    except DataError as exc:
        log.warning("%s; encoding the prompts again", str(exc).split(";")[0])
        return None
    if index.get("prompt_set") != prompt_set or index.get("prompts") != prompts:
        return None
    return index


class TextCache:
    """Maps prompts to the backbone's encoded conditioning, read row by row from disk."""

    def __init__(self, directory: Path, device: torch.device, index: dict[str, Any]):
        self.directory = Path(directory)
        self.device = device
        self.prompt_set = index["prompt_set"]
        self.recorded = index["parts"]
        self.prompts: list[str] = index["prompts"]
        self.position = {prompt: i for i, prompt in enumerate(self.prompts)}
        self._parts: dict[int, tuple[RowFile, dict]] = {}

    @classmethod
    def build(cls, directory: Path, backbone, prompts: Sequence[str], batch_size: int, accelerator) -> "TextCache":
        """Encode the prompts this process owns (part k on process k mod P) and seal the index."""
        from tqdm.auto import tqdm

        prompts = sorted(set(prompts))  # order-free, so every process agrees on the parts
        prompt_set = identity_hash(prompts)
        # One subdirectory per prompt set: parts left by a build for other prompts
        # (a changed dataset, a killed build) can never be taken for these.
        directory = Path(directory) / prompt_set[:16]
        directory.mkdir(parents=True, exist_ok=True)
        index = _read_index(directory, prompt_set, prompts)
        parts = range((len(prompts) + PART_SIZE - 1) // PART_SIZE)
        mine = [k for k in parts if k % accelerator.num_processes == accelerator.process_index]
        todo = []
        for k in mine:
            try:
                _read_part(directory, k, prompt_set, index["parts"][k] if index else None)[0].close()
            except DataError as exc:
                if _sidecar_path(directory, k).exists() or _part_path(directory, k).exists():
                    log.warning("%s; encoding it again", str(exc).split(";")[0])
                todo.append(k)
        accelerator.wait_for_everyone()
        if index is not None and not todo and all(_sidecar_path(directory, k).is_file() for k in parts):
            return cls(directory, accelerator.device, index)
        with tqdm(total=sum(len(prompts[k * PART_SIZE:(k + 1) * PART_SIZE]) for k in todo), unit="prompt",
                  desc="encoding prompts", disable=not todo) as bar:
            for k in todo:
                chunk = prompts[k * PART_SIZE:(k + 1) * PART_SIZE]
                tensors: dict[str, Any] = {}
                for start in range(0, len(chunk), batch_size):
                    with torch.no_grad():
                        cond = backbone.encode_prompts(chunk[start:start + batch_size])
                    for key, value in cond.items():
                        tensors.setdefault(key, []).append(value.detach().cpu())
                    bar.update(min(batch_size, len(chunk) - start))
                data, header, digests = serialize({key: torch.cat(v).contiguous() for key, v in tensors.items()},
                                                  {"prompt_set": prompt_set, "part": str(k)})
                write_atomic(_part_path(directory, k), data)
                # The sidecar goes last: its presence is what marks the part written.
                write_json_atomic(_sidecar_path(directory, k),
                                  seal({"prompt_set": prompt_set, "part": k, "header": header, "rows": digests}))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checksums = [read_sealed(_sidecar_path(directory, k), REPAIR)["sha256"] for k in parts]
            write_json_atomic(directory / INDEX, seal({"prompt_set": prompt_set, "prompts": prompts,
                                                       "parts": checksums}))
        accelerator.wait_for_everyone()
        return cls(directory, accelerator.device, _read_index(directory, prompt_set, prompts))

    def _part(self, part: int) -> tuple[RowFile, dict]:
        if part not in self._parts:
            self._parts[part] = _read_part(self.directory, part, self.prompt_set, self.recorded[part])
        return self._parts[part]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parts": {}}

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached conditioning of these prompts, batch first, as encode_prompts returns it."""
        places = [divmod(self.position[prompt], PART_SIZE) for prompt in prompts]
        first, sidecar = self._part(places[0][0])
        out: dict[str, torch.Tensor] = {}
        for key in sidecar["rows"]:
            dtype, shape = first.row_spec(key)
            tensor = torch.empty((len(places), *shape), dtype=dtype)
            buffer = row_bytes(tensor)  # rows are read straight into the batch tensor
            for slot, (part, offset) in enumerate(places):
                file, digests = self._part(part)
                file.read_into(key, offset, buffer[slot], digests["rows"][key][offset])
            out[key] = tensor.to(self.device)
        return out
