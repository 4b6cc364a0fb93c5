"""load_prompts: every file format, the selection rules, and one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefopt.data.prompts import load_prompts
from prefopt.errors import DataError
from prefopt.recipe import PromptsConfig

PROMPTS = ["a red cat", "two dogs in the snow", "a lighthouse at dusk"]


def load(path, **settings):
    return load_prompts(PromptsConfig(path=str(path), **settings))


def test_text_file_one_prompt_a_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\n\n  two dogs   in the snow \n\na lighthouse at dusk\n")
    assert load(path) == PROMPTS


def test_jsonl_reads_the_named_column(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"text": p, "id": i}) for i, p in enumerate(PROMPTS)) + "\n")
    assert load(path, column="text") == PROMPTS


def test_csv_reads_the_named_column_with_quoted_commas(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('id,prompt\n0,"a red cat, sitting"\n1,two dogs in the snow\n')
    assert load(path) == ["a red cat, sitting", "two dogs in the snow"]


def test_parquet_like_diffusiondb_metadata_skips_nulls(tmp_path):
    path = tmp_path / "metadata.parquet"
    names = ["a.png", "b.png", "c.png", "d.png"]
    table = pa.table({"image_name": names, "prompt": PROMPTS[:2] + [None, PROMPTS[2]]})
    pq.write_table(table, path)
    assert load(path) == PROMPTS


def test_saved_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"prompt": PROMPTS}).save_to_disk(str(tmp_path / "single"))
    assert load(tmp_path / "single") == PROMPTS
    train, test = (datasets.Dataset.from_dict({"caption": rows}) for rows in (PROMPTS, ["x y"]))
    splits = datasets.DatasetDict({"train": train, "test": test})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load(tmp_path / "dict", column="caption", split="test") == ["x y"]
    with pytest.raises(DataError, match=r"no split 'valid' \(available: train, test\)"):
        load(tmp_path / "dict", column="caption", split="valid")


def test_relative_path_is_taken_from_base_dir(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red cat\n")
    assert load_prompts(PromptsConfig(path="prompts.txt"), base_dir=tmp_path) == ["a red cat"]


def test_dedupe_keeps_first_occurrences_in_order(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("b c\na b\nb c\nc d\na b\n")
    assert load(path) == ["b c", "a b", "c d"]
    assert load(path, dedupe=False) == ["b c", "a b", "b c", "c d", "a b"]


def test_min_words_and_max_count(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\ntwo words\nnow three words\nand now four words\n")
    assert load(path, min_words=2) == ["two words", "now three words", "and now four words"]
    assert load(path, min_words=2, max_count=2) == ["two words", "now three words"]


def test_shuffle_is_seeded_and_happens_before_max_count(tmp_path):
    path = tmp_path / "p.txt"
    prompts = [f"prompt number {i}" for i in range(50)]
    path.write_text("\n".join(prompts))
    shuffled = load(path, shuffle_seed=3)
    assert shuffled == load(path, shuffle_seed=3)
    assert sorted(shuffled) == sorted(prompts) and shuffled != prompts
    assert load(path, shuffle_seed=3, max_count=5) == shuffled[:5]
    assert load(path, shuffle_seed=4) != shuffled


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_column_names_the_file_and_lists_available_columns(tmp_path, suffix):
    path = tmp_path / f"prompts{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"text": "a b", "id": 0}) + "\n")
    elif suffix == ".csv":
        path.write_text("text,id\na b,0\n")
    else:
        pq.write_table(pa.table({"text": ["a b"], "id": [0]}), path)
    with pytest.raises(DataError, match=r"has no column 'prompt' \(available: text, id\)") as info:
        load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="prompt file not found: .*nope.txt"):
        load(tmp_path / "nope.txt")


def test_unsupported_suffix_is_a_data_error(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text("[]")
    with pytest.raises(DataError, match="unsupported prompt file"):
        load(path)


def test_invalid_jsonl_line_names_its_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON"):
        load(path)


def test_empty_result_says_why(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\none\ntwo\n")
    expected = r"no prompts left from .*p.txt: 3 read, 1 duplicate\(s\) dropped, 2 under min_words=2"
    with pytest.raises(DataError, match=expected):
        load(path, min_words=2)


def test_hub_id_goes_to_load_dataset_with_the_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(source, split):  # stands in for the hub: no network in tests
        calls.append((source, split))
        return datasets.Dataset.from_dict({"prompt": PROMPTS})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_prompts(PromptsConfig(path="someone/prompts", split="test"), base_dir=tmp_path) == PROMPTS
    assert calls == [("someone/prompts", "test")]


def test_hub_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(source, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load prompts from 'someone/prompts' .*ConnectionError: no network"):
        load("someone/prompts")


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_damaged_parquet_file_is_one_data_error(tmp_path, damage):
    path = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS}), path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"\x00not parquet\xff" * 10, "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(DataError, match="is not a readable parquet file"):
        load(path)


def test_values_that_are_not_text_are_left_out_with_a_warning(tmp_path, caplog):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": PROMPTS[0]}, {"prompt": 7}, {"prompt": None}, {"prompt": ["a", "list"]}, {"prompt": PROMPTS[1]}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with caplog.at_level("WARNING"):
        assert load(path) == PROMPTS[:2]
    assert "2 of 5 values in column 'prompt' are not text (e.g. int)" in caplog.text


def test_a_parquet_error_without_a_message_is_still_one_data_error(tmp_path, monkeypatch):
    path = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS}), path)

    def silent(*args, **kwargs):
        raise pa.ArrowInvalid("")

    monkeypatch.setattr(pq, "read_schema", silent)
    with pytest.raises(DataError, match=r"is not a readable parquet file \(ArrowInvalid\)"):
        load(path)


def test_csv_with_a_quote_left_open_is_one_error_naming_the_file(tmp_path):
    # Unchecked, the open quote swallows every later row into one "prompt".
    path = tmp_path / "p.csv"
    path.write_text('id,prompt\n0,"a red cat\n1,two dogs in the snow\n2,a lighthouse at dusk\n')
    with pytest.raises(DataError, match=r"p.csv:2: not valid CSV \(unexpected end of data\)") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_control_characters_in_a_prompt_count_as_whitespace(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt\n"a red\x00cat\x1b"\n"two dogs\x7f in the snow"\n')
    assert load(path) == ["a red cat", "two dogs in the snow"]


def test_text_file_keeps_a_prompt_with_a_unicode_line_separator_whole(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red cat\u2028sitting\r\ntwo dogs in the snow\n", encoding="utf-8", newline="")
    assert load(path) == ["a red cat sitting", "two dogs in the snow"]  # one prompt, its separator a space


def test_a_lone_surrogate_escape_in_a_jsonl_prompt_is_one_error_naming_its_line(tmp_path):
    # JSON can escape half a UTF-16 pair; the tokenizer then failed with a TypeError at pair building.
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red cat \\ud83d\\ude00"}\n{"prompt": "a photo of a 7 \\ud800"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: holds a lone surrogate escape"):
        load(path)
