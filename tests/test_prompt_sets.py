"""Benchmark prompt files read by the prompt-set evaluators: PartiPrompts TSV, HPSv2 JSON lists, COCO captions."""

from __future__ import annotations

import json

import pytest

from prefopt.errors import DataError
from prefopt.recipe import PromptsConfig
from prefopt_evaluators.prompt_sets import load_prompt_set


def test_partiprompts_tsv(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\nbond\tAbstract\tBasic\na  red car\tVehicles\tColors\n")
    assert load_prompt_set(PromptsConfig(path=str(path), column="Prompt")) == ["bond", "a red car"]
    with pytest.raises(DataError, match="no column 'prompt'.*Prompt"):
        load_prompt_set(PromptsConfig(path=str(path)))


def test_hpsv2_json_list_and_coco_captions(tmp_path):
    hps = tmp_path / "anime.json"
    hps.write_text(json.dumps(["a cat in a hat", "a dog", "a cat in a hat"]))
    assert load_prompt_set(PromptsConfig(path=str(hps))) == ["a cat in a hat", "a dog"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "caption": "A man riding a horse.\n"},
                                                               {"image_id": 2, "caption": "Two dogs."}]}))
    assert load_prompt_set(PromptsConfig(path=str(coco), max_count=1)) == ["A man riding a horse."]
    (tmp_path / "bad.json").write_text(json.dumps({"prompts": 3}))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_prompt_set(PromptsConfig(path=str(tmp_path / "bad.json")))


def test_other_formats_go_through_the_prompt_reader(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("a red car\n\na dog\n")
    assert load_prompt_set(PromptsConfig(path=str(path))) == ["a red car", "a dog"]


# ------------------------------------------------------------------ hostile files: one line naming the file

def test_a_file_that_is_not_utf8_is_one_error(tmp_path):
    for name in ("latin1.tsv", "latin1.json"):
        path = tmp_path / name
        path.write_bytes("Prompt\n\"caf\xe9\"\n".encode("latin-1") if name.endswith(".tsv")
                         else '["caf\xe9"]'.encode("latin-1"))
        with pytest.raises(DataError, match=f"{path} is not UTF-8 text .*iconv"):
            load_prompt_set(PromptsConfig(path=str(path), column="Prompt"))


def test_a_quote_left_open_in_a_tsv_names_the_line(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text('Prompt\tCategory\na red car\tVehicles\n"a dog\tAnimals\na cat\tAnimals\na cow\tAnimals\n')
    with pytest.raises(DataError, match=f"{path}:3: not valid TSV .*quoting"):
        load_prompt_set(PromptsConfig(path=str(path), column="Prompt"))


def test_a_tsv_field_over_the_csv_limit_is_one_error(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\na red car\tVehicles\n" + "word " * 30_000 + "\tLong\n")
    with pytest.raises(DataError, match=f"{path}:3: not valid TSV .*field larger than field limit"):
        load_prompt_set(PromptsConfig(path=str(path), column="Prompt"))


def test_values_of_a_json_list_that_are_not_text_are_counted_in_a_warning(tmp_path, caplog):
    path = tmp_path / "anime.json"
    path.write_text(json.dumps(["a cat in a hat", 7, ["a dog"], None, "a dog"]))
    with caplog.at_level("WARNING", logger="prefopt_evaluators.prompt_sets"):
        assert load_prompt_set(PromptsConfig(path=str(path))) == ["a cat in a hat", "a dog"]
    assert f"{path}: 2 of 5 values are not text (e.g. int) and were left out" in caplog.text
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"caption": "Two dogs."}, {"caption": 3}]}))
    with caplog.at_level("WARNING", logger="prefopt_evaluators.prompt_sets"):
        assert load_prompt_set(PromptsConfig(path=str(coco))) == ["Two dogs."]
    assert f"{coco}: 1 of 2 values are not text" in caplog.text
    coco.write_text(json.dumps({"annotations": [{"caption": "Two dogs."}, "A cat."]}))
    with pytest.raises(DataError, match=r"annotations\[1\] is not an object"):
        load_prompt_set(PromptsConfig(path=str(coco)))


def test_json_nested_past_the_stack_is_one_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=f"{path}: not usable JSON"):
        load_prompt_set(PromptsConfig(path=str(path)))
