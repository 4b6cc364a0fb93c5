"""Evaluators say before any drawing (or training) that a file they need is missing."""

from __future__ import annotations

import pytest

from prefopt.errors import DataError, PrefoptError
from prefopt_evaluators.fid import Fid
from prefopt_evaluators.geneval import GenEval
from prefopt_evaluators.preference_scores import Aesthetic, HPSv2


@pytest.mark.parametrize("evaluator, message", [
    (GenEval(GenEval.Config(metadata="missing/evaluation_metadata.jsonl")), "GenEval metadata file not found"),
    (HPSv2(HPSv2.Config(prompts=["a cat"], checkpoint="models/HPS_v2_compressed.pt")), "HPS_v2_compressed.pt"),
    (HPSv2(HPSv2.Config(prompts_file="missing/photo.json")), "prompt file not found"),
    (HPSv2(HPSv2.Config()), "has no prompts"),
    (Aesthetic(Aesthetic.Config(prompts=["a cat"], head="models/head.pth")), "head.pth"),
    (Fid(Fid.Config(prompts=["a cat"], reference_images="data/coco/val2014")), "data/coco/val2014"),
])
def test_check_names_what_is_missing(evaluator, message):
    with pytest.raises(PrefoptError, match=message):
        evaluator.check()


def test_geneval_check_reads_the_metadata(tmp_path):
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, '
                   '"color": "teal"}]}\n')
    with pytest.raises(DataError, match="colour 'teal'"):
        GenEval(GenEval.Config(metadata=str(bad))).check()
