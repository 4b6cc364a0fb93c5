"""pickapic: human-labelled pairs from a Pick-a-Pic style parquet file or datasets directory."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prefopt.errors import DataError
from prefopt_pairs.pickapic import PickAPic


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, GREEN, BLUE, WHITE, BLACK, GREY = (png(c) for c in ("red", "green", "blue", "white", "black", "grey"))
ROWS = {
    "jpg_0": [RED, BLUE, BLACK],
    "jpg_1": [GREEN, WHITE, GREY],
    "label_0": [1.0, 0.5, 0.0],
    "caption": ["a red square", "a tie", "a grey square"],
}


@pytest.fixture
def parquet_file(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({**ROWS, "are_different": [True] * 3}), path)
    return path


def source(path, **settings) -> PickAPic:
    return PickAPic(PickAPic.Config(path=str(path), **settings))


def test_winner_and_loser_follow_label_0_and_ties_are_skipped(parquet_file):
    rows = list(source(parquet_file).pairs(None, seed=0))
    assert [row.prompt for row in rows] == ["a red square", "a grey square"]
    assert [row.degraded for row in rows] == [row.prompt for row in rows]  # c- is c, as in Diffusion-DPO
    assert (rows[0].winner, rows[0].loser) == (RED, GREEN)  # label_0 = 1: image 0 preferred
    assert (rows[1].winner, rows[1].loser) == (GREY, BLACK)  # label_0 = 0: image 1 preferred
    assert all(row.loser_from is None for row in rows)
    assert Image.open(io.BytesIO(rows[0].winner)).getpixel((0, 0)) == (255, 0, 0)


def test_ties_kept_on_request_and_max_count(parquet_file):
    rows = list(source(parquet_file, skip_ties=False).pairs(None, seed=0))
    assert [row.prompt for row in rows] == ["a red square", "a tie", "a grey square"]
    assert (rows[1].winner, rows[1].loser) == (BLUE, WHITE)
    assert len(list(source(parquet_file, max_count=1).pairs(None, seed=0))) == 1


def test_recipe_prompts_are_ignored_and_seeds_are_deterministic(parquet_file):
    rows = list(source(parquet_file).pairs(["some other prompt"], seed=3))
    assert [row.prompt for row in rows] == ["a red square", "a grey square"]
    assert [row.seed for row in rows] == [row.seed for row in list(source(parquet_file).pairs(None, seed=3))]


def test_directory_of_shards_picks_the_split(tmp_path, parquet_file):
    shards = tmp_path / "data"
    shards.mkdir()
    parquet_file.rename(shards / parquet_file.name)
    pq.write_table(pa.table({k: v[:1] for k, v in ROWS.items()}), shards / "test-00000-of-00001.parquet")
    assert len(list(source(shards).pairs(None, seed=0))) == 2
    assert len(list(source(shards, split="test").pairs(None, seed=0))) == 1


def test_saved_datasets_directory_with_image_features(tmp_path):
    datasets = pytest.importorskip("datasets")
    image, text = datasets.Image(), datasets.Value("string")
    features = datasets.Features({"jpg_0": image, "jpg_1": image, "label_0": datasets.Value("float64"), "caption": text})
    as_struct = {column: [{"bytes": b, "path": None} for b in ROWS[column]] for column in ("jpg_0", "jpg_1")}
    cells = {**ROWS, **as_struct}
    dataset = datasets.Dataset.from_dict(cells, features=features)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    rows = list(source(tmp_path / "saved").pairs(None, seed=0))
    assert [(row.winner, row.loser) for row in rows] == [(RED, GREEN), (GREY, BLACK)]


def test_missing_columns_and_bad_labels_are_data_errors(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"jpg_0": [RED], "caption": ["x"]}), path)
    with pytest.raises(DataError, match=r"missing column\(s\) jpg_1, label_0 \(available: jpg_0, caption\)"):
        list(source(path).pairs(None, seed=0))
    pq.write_table(pa.table({**{k: v[:1] for k, v in ROWS.items()}, "label_0": [0.3]}), path)
    with pytest.raises(DataError, match="label_0 must be 0, 0.5 or 1, got 0.3"):
        list(source(path).pairs(None, seed=0))
    with pytest.raises(DataError, match="not found"):
        list(source(tmp_path / "nope.parquet").pairs(None, seed=0))


def test_rows_stream_without_holding_the_file(tmp_path):
    """Arrow holds about one record batch of images at a time, not the file (pyarrow's pre-buffering would)."""
    rng = __import__("random").Random(0)
    path = tmp_path / "train-00000-of-00001.parquet"
    with pq.ParquetWriter(path, pa.schema([("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                                          ("label_0", pa.float64()), ("caption", pa.string())])) as writer:
        for group in range(64):  # 1024 rows, 16 KiB of incompressible image bytes each: 16 MiB
            writer.write_table(pa.table({"jpg_0": [rng.randbytes(8 << 10) for _ in range(16)],
                                         "jpg_1": [rng.randbytes(8 << 10) for _ in range(16)],
                                         "label_0": [1.0] * 16, "caption": [f"c{group}"] * 16}))
    allocated = max(pa.total_allocated_bytes() for _ in source(path).pairs(None, seed=0))
    assert allocated < path.stat().st_size / 2, (allocated, path.stat().st_size)


@pytest.mark.parametrize("keep", [0, 0.5])
def test_a_damaged_parquet_file_is_one_data_error(parquet_file, keep):
    data = parquet_file.read_bytes()
    parquet_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="is not a readable parquet file"):
        list(source(parquet_file).pairs(None, seed=0))
