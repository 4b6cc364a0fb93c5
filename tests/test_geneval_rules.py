"""GenEval's decision rules on constructed detections, and the real metadata file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from prefopt.errors import DataError
from prefopt_evaluators.geneval_rules import (
    COLOURS, TAGS, Detection, classes_of, judge, read_metadata, relations, select_detections, tag_scores,
)

METADATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "geneval" / "evaluation_metadata.jsonl"


def det(label, x, y, w=10.0, h=10.0, score=0.95, color=None):
    """A detection centred at (x, y)."""
    return Detection(label, score, (x - w / 2, y - h / 2, x + w / 2, y + h / 2), color=color)


def row(tag, include, exclude=None, prompt="p"):
    out = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        out["exclude"] = exclude
    return out


# ------------------------------------------------------------------ objects and counts

def test_single_object_found_or_missing():
    cat = row("single_object", [{"class": "cat", "count": 1}])
    assert judge(cat, [det("cat", 50, 50)]).correct
    verdict = judge(cat, [det("dog", 50, 50)])
    assert not verdict.correct and verdict.reason == "expected cat>=1, found 0"


def test_confidence_threshold_is_strict_and_03():
    cat = row("single_object", [{"class": "cat", "count": 1}])
    assert not judge(cat, [det("cat", 50, 50, score=0.3)]).correct
    assert judge(cat, [det("cat", 50, 50, score=0.31)]).correct


def test_counting_uses_the_09_threshold_and_its_exclude_clause():
    three = row("counting", [{"class": "dog", "count": 3}], [{"class": "dog", "count": 4}])
    # Three dogs, one of them at 0.85: counted under another tag, not under "counting".
    dogs = [det("dog", 10, 10), det("dog", 40, 10), det("dog", 70, 10, score=0.85)]
    verdict = judge(three, dogs)
    assert not verdict.correct and verdict.reason == "expected dog>=3, found 2"
    assert judge({**three, "tag": "two_object"}, dogs).correct
    assert judge(three, dogs[:2] + [det("dog", 70, 10, score=0.91)]).correct
    # Four confident dogs: the exclude clause fails.
    four = dogs[:2] + [det("dog", 70, 10), det("dog", 90, 10)]
    verdict = judge(three, four)
    assert not verdict.correct and verdict.reason == "expected dog<4, found 4"
    # A fourth dog below the counting threshold is not seen.
    assert judge(three, four[:3] + [det("dog", 90, 10, score=0.5)]).correct


def test_at_most_16_per_class_most_confident_first():
    many = [det("bird", i, i, score=0.4 + i / 100) for i in range(20)]
    kept = select_detections(many, "single_object")["bird"]
    assert len(kept) == 16
    assert [d.score for d in kept] == sorted((d.score for d in many), reverse=True)[:16]
    # So an exclude clause can never see more than 16.
    verdict = judge(row("counting", [{"class": "bird", "count": 1}], [{"class": "bird", "count": 17}]),
                    [det("bird", i, i) for i in range(20)])
    assert verdict.correct


def test_two_objects():
    both = row("two_object", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}])
    assert judge(both, [det("cat", 20, 50), det("dog", 80, 50)]).correct
    verdict = judge(both, [det("cat", 20, 50)])
    assert not verdict.correct and "expected dog>=1, found 0" in verdict.reason


def test_exclude_clause():
    no_car = row("single_object", [{"class": "cat", "count": 1}], [{"class": "car", "count": 1}])
    assert judge(no_car, [det("cat", 50, 50), det("car", 10, 10, score=0.2)]).correct
    verdict = judge(no_car, [det("cat", 50, 50), det("car", 10, 10)])
    assert not verdict.correct and verdict.reason == "expected car<1, found 1"


# ------------------------------------------------------------------ colours

def test_colour_from_the_detections():
    red_car = row("colors", [{"class": "car", "count": 1, "color": "red"}])
    assert judge(red_car, [det("car", 50, 50, color="red")]).correct
    verdict = judge(red_car, [det("car", 50, 50, color="blue")])
    assert not verdict.correct and verdict.reason == "expected red car>=1, found 0 red (1 blue)"


def test_colour_checks_only_the_count_most_confident():
    two_red = row("color_attr", [{"class": "car", "count": 2, "color": "red"}])
    cars = [det("car", 10, 10, score=0.9, color="red"), det("car", 50, 10, score=0.8, color="blue"),
            det("car", 90, 10, score=0.7, color="red")]
    assert not judge(two_red, cars).correct  # the third red car is not among the two most confident
    cars[1].color = "red"
    assert judge(two_red, cars).correct


def test_colour_classifier_is_asked_for_the_chosen_detections():
    asked = []

    def classify(detections, label):
        asked.append((label, [d.score for d in detections]))
        return ["green"] * len(detections)

    green = row("colors", [{"class": "apple", "count": 1, "color": "green"}])
    apples = [det("apple", 10, 10, score=0.6), det("apple", 50, 10, score=0.99)]
    assert judge(green, apples, classify).correct
    assert asked == [("apple", [0.99])]
    with pytest.raises(ValueError, match="no colour classifier"):
        judge(green, apples)


def test_colour_attribution_binds_each_colour_to_its_object():
    prompt = row("color_attr", [{"class": "cat", "count": 1, "color": "red"},
                                {"class": "dog", "count": 1, "color": "blue"}])
    assert judge(prompt, [det("cat", 20, 50, color="red"), det("dog", 80, 50, color="blue")]).correct
    swapped = judge(prompt, [det("cat", 20, 50, color="blue"), det("dog", 80, 50, color="red")])
    assert not swapped.correct and swapped.reason.count("expected") == 2


# ------------------------------------------------------------------ positions

@pytest.mark.parametrize("relation, offset", [("left of", (-40, 0)), ("right of", (40, 0)),
                                              ("above", (0, -40)), ("below", (0, 40))])
def test_each_position_relation(relation, offset):
    prompt = row("position", [{"class": "cat", "count": 1},
                              {"class": "dog", "count": 1, "position": [relation, 0]}])
    dog = det("dog", 50 + offset[0], 50 + offset[1])
    assert relations(dog, det("cat", 50, 50)) == {relation}
    assert judge(prompt, [det("cat", 50, 50), dog]).correct
    opposite = det("dog", 50 - offset[0], 50 - offset[1])
    verdict = judge(prompt, [det("cat", 50, 50), opposite])
    assert not verdict.correct and verdict.reason.startswith(f"expected dog {relation} target, found ")


def test_position_margin_and_diagonals():
    cat = det("cat", 50, 50, w=20, h=20)
    # Offset 3 < 10% of the summed widths (4): no relation at all.
    assert relations(det("dog", 53, 50, w=20, h=20), cat) == set()
    # Offset 10 > 4: the revised offset is 6 of 10, above one half: "right of".
    assert relations(det("dog", 60, 50, w=20, h=20), cat) == {"right of"}
    # Offset 8: revised 4 of 8 is not above one half.
    assert relations(det("dog", 58, 50, w=20, h=20), cat) == set()
    # A clear diagonal is both.
    assert relations(det("dog", 100, 100, w=20, h=20), cat) == {"right of", "below"}


def test_position_needs_its_target_and_every_pair():
    prompt = row("position", [{"class": "cat", "count": 1},
                              {"class": "dog", "count": 1, "position": ["left of", 0]}])
    verdict = judge(prompt, [det("dog", 10, 50)])
    assert not verdict.correct and "no target for dog to be left of" in verdict.reason
    two = row("position", [{"class": "cat", "count": 2},
                           {"class": "dog", "count": 1, "position": ["left of", 0]}])
    cats = [det("cat", 50, 50), det("cat", 90, 50)]
    assert judge(two, cats + [det("dog", 10, 50)]).correct
    assert not judge(two, cats + [det("dog", 70, 50)]).correct  # right of the first cat


# ------------------------------------------------------------------ scores and metadata

def test_overall_is_the_mean_of_tag_scores_not_of_images():
    tags = ["counting"] * 4 + ["colors"] * 1
    correct = [True, True, True, True, False]
    scores = tag_scores(tags, correct)
    assert scores == {"counting": 1.0, "colors": 0.0, "overall": 0.5}
    assert sum(correct) / len(correct) == 0.8  # the mean over images differs


def test_real_metadata_file_parses():
    if not METADATA.is_file():
        pytest.skip(f"{METADATA} is not in this checkout's ../shared")
    rows = read_metadata(METADATA)
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {"position": 100, "color_attr": 100, "two_object": 99,
                                               "colors": 94, "single_object": 80, "counting": 80}
    assert set(TAGS) == {r["tag"] for r in rows}
    names = (METADATA.parent / "object_names.txt").read_text().splitlines()
    assert classes_of(rows) <= set(names)
    assert {c["color"] for r in rows for c in r["include"] if "color" in c} <= set(COLOURS)


@pytest.mark.parametrize("bad, message", [
    ("not json", "not valid JSON"),
    (json.dumps({"tag": "colors", "prompt": "p"}), "'include' must be a list"),
    (json.dumps(row("colors", [{"class": "car", "count": 1, "color": "teal"}])), "colour 'teal'"),
    (json.dumps(row("position", [{"class": "car", "count": 1, "position": ["near", 0]}])), "position must be"),
    (json.dumps(row("counting", [{"class": "car", "count": 0}])), "'count' >= 1"),
    # Each of these failed only at scoring, after training, or was taken for something else.
    (json.dumps(row("counting", [{"class": "car", "count": 2}], exclude=5)), "'exclude' must be a list"),
    (json.dumps({**row("counting", [{"class": "car", "count": 2}]), "exclude": None}), "'exclude' must be a list"),
    (json.dumps(row("counting", [{"class": "car", "count": 2}], exclude=["car"])), "every exclude clause needs"),
    (json.dumps(row("counting", [{"class": "car", "count": True}])), "whole-number 'count'"),
    (json.dumps(row("counting", [{"class": "car", "count": 2.0}])), "whole-number 'count'"),
    (json.dumps(row("single_object", ["car"])), "every include clause needs"),
    (json.dumps(row("Counting", [{"class": "car", "count": 2}])), "tag 'Counting' is not one of single_object"),
    (json.dumps(row("position", [{"class": "car", "count": 1},
                                 {"class": "dog", "count": 1, "position": ["left of", False]}])), "position must be"),
])
def test_bad_metadata_names_the_line(tmp_path, bad, message):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(row("single_object", [{"class": "cat", "count": 1}])) + "\n" + bad + "\n")
    with pytest.raises(DataError, match=message) as info:
        read_metadata(path)
    assert f"{path}:2" in str(info.value)
