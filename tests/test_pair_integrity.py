"""Damaged pair datasets are refused before a byte of them is trained on, and `pairs build` repairs them.

Each kind of damage is made to a copy of a built toy dataset: a flipped byte in
a latent, a cut or missing tensor file, an edited sidecar row (with and without
its checksum recomputed), an edited manifest, and a self-consistent shard copied
from a dataset built with another seed. Reading refuses each with one
``error:`` line naming the file; ``prefopt pairs build`` then rebuilds the
damaged part, giving back the original dataset byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import cli, error_lines, tiny_toy_recipe

from prefopt.data.integrity import seal
from prefopt.data.pairset import PairDataset
from prefopt.errors import DataError

SHARD = "shard-00001"


def write_recipe(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = tiny_toy_recipe(directory / "run", pretrain=False, seed=seed, pairs={"shard_size": 4},
                           train={"max_steps": 4, "checkpoint_every": 0, "loader_workers": 1})
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[int, Path]:
    """Pair datasets of the same recipe built with seeds 0 and 1 (16 rows in 4 shards each)."""
    out = {}
    for seed in (0, 1):
        base = tmp_path_factory.mktemp(f"seed{seed}")
        code, err = cli("pairs", "build", write_recipe(base, seed))
        assert code == 0, err
        out[seed] = base / "run" / "pairs"
    return out


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def edit_json(path: Path, change, reseal: bool = False) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(seal(obj) if reseal else obj))


def _rename_prompt(info: dict) -> None:
    info["rows"][0]["prompt"] = "7"


TAMPERING = {
    "tensor byte flipped": (lambda d, other: flip_last_byte(d / "shards" / f"{SHARD}.safetensors"),
                            f"{SHARD}.safetensors"),
    "tensor file cut": (lambda d, other: (d / "shards" / f"{SHARD}.safetensors").write_bytes(
        (d / "shards" / f"{SHARD}.safetensors").read_bytes()[:-8]), f"{SHARD}.safetensors"),
    "tensor file missing": (lambda d, other: (d / "shards" / f"{SHARD}.safetensors").unlink(),
                            f"{SHARD}.safetensors"),
    "sidecar row edited": (lambda d, other: edit_json(d / "shards" / f"{SHARD}.json", _rename_prompt),
                           f"{SHARD}.json"),
    "sidecar row edited, checksum recomputed": (
        lambda d, other: edit_json(d / "shards" / f"{SHARD}.json", _rename_prompt, reseal=True), f"{SHARD}.json"),
    "manifest edited": (lambda d, other: edit_json(d / "manifest.json", lambda m: m["shards"].reverse()),
                        "manifest.json"),
    "manifest settings edited, checksum recomputed": (
        lambda d, other: edit_json(d / "manifest.json", lambda m: m["pairs"].update(seed=5), reseal=True),
        "manifest.json"),
    "shard of another dataset": (
        lambda d, other: [shutil.copy(other / "shards" / f"{SHARD}{ext}", d / "shards" / f"{SHARD}{ext}")
                          for ext in (".json", ".safetensors")], f"{SHARD}.json"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_damage_is_refused_naming_the_file_and_pairs_build_repairs_it(tmp_path, built, kind):
    tamper, named = TAMPERING[kind]
    recipe = write_recipe(tmp_path)
    pairs = tmp_path / "run" / "pairs"
    shutil.copytree(built[0], pairs)
    original = files_of(pairs)
    tamper(pairs, built[1])

    with pytest.raises(DataError, match=named.replace(".", r"\.")):
        dataset = PairDataset(pairs)
        dataset.batch(range(len(dataset)))
    code, err = cli("pairs", "show", pairs, "--count", "16")
    assert code == 2 and len(error_lines(err)) == 1 and named in error_lines(err)[0], err
    assert "prefopt pairs build" in error_lines(err)[0]  # the command that repairs it

    code, err = cli("pairs", "build", recipe)
    assert code == 0, err
    assert files_of(pairs) == original  # rebuilt to the byte
    dataset = PairDataset(pairs)
    dataset.batch(range(len(dataset)))


def test_a_run_refuses_a_flipped_latent_byte_in_one_line(tmp_path, built):
    """`run` checks sidecars and headers up front; a row's bytes are checked as a worker reads them."""
    recipe = write_recipe(tmp_path)
    pairs = tmp_path / "run" / "pairs"
    shutil.copytree(built[0], pairs)
    flip_last_byte(pairs / "shards" / f"{SHARD}.safetensors")
    code, err = cli("run", recipe)
    assert code == 2, err
    (line,) = error_lines(err)
    assert f"{SHARD}.safetensors is damaged (row 3 of x0_" in line and "prefopt pairs build" in line
    assert "Traceback" not in err


def test_a_run_rebuilds_a_damaged_sidecar_with_a_warning(tmp_path, built, caplog):
    recipe = write_recipe(tmp_path)
    pairs = tmp_path / "run" / "pairs"
    shutil.copytree(built[0], pairs)
    original = files_of(pairs)
    edit_json(pairs / "shards" / f"{SHARD}.json", _rename_prompt)
    code, err = cli("run", recipe)
    assert code == 0, err
    assert f"{SHARD}.json is damaged" in caplog.text
    assert files_of(pairs) == original
