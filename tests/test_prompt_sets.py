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
