"""GenEval's decision rules, apart from any detector: detections and a metadata row in, verdict out.

GenEval (Ghosh et al., 2023) judges an image by what an object detector finds
in it. This module holds only the rules and thresholds of the benchmark's own
evaluator, restated from its published description, so that any detector can
feed them: the ``geneval`` evaluator's Mask2Former + CLIP, or a small
benchmark's own classifier. It imports neither torch nor a model.

A metadata row is one line of GenEval's ``evaluation_metadata.jsonl``::

    {"tag": "position", "prompt": "a photo of a dog right of a teddy bear",
     "include": [{"class": "teddy bear", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}]}

The rules, in the benchmark's terms:

* detections of a class are sorted by confidence and kept when the confidence
  exceeds 0.3 (0.9 for rows tagged ``counting``), at most 16 per class, with
  no non-maximum suppression;
* an ``include`` clause ``{class, count}`` needs at least ``count`` kept
  detections; its ``count`` most confident ones are checked for ``color``
  (at least ``count`` of them of that colour) and ``position`` (each of them
  in the relation to each detection matched by the clause it points to);
* an ``exclude`` clause ``{class, count}`` fails with ``count`` or more kept
  detections of the class;
* a tag's score is the share of its images judged correct, and Overall is the
  mean of the tag scores (not the mean over images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from prefopt.api import DataError, jsonl_objects

CONFIDENCE_THRESHOLD = 0.3
COUNTING_CONFIDENCE_THRESHOLD = 0.9  # rows tagged "counting": only confident detections are counted
MAX_PER_CLASS = 16
POSITION_MARGIN = 0.1  # share of the two boxes' sizes an offset must exceed before it counts
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class Detection:
    """One object a detector found: its class, confidence and box (x0, y0, x1, y1) in pixels.

    ``mask`` (a boolean H × W array, or None) is the instance mask, used to
    colour-classify the object; ``color`` is set when the detector already
    knows the colour (otherwise a colour classifier is asked).
    """

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: Any = None
    color: str | None = None


ColourClassifier = Callable[[Sequence[Detection], str], Sequence[str]]
"""(detections of one class, the class) -> one colour name per detection."""


@dataclass
class Verdict:
    correct: bool
    reason: str  # empty when correct; otherwise one sentence per failed clause, joined by "; "


def confidence_threshold(tag: str) -> float:
    return COUNTING_CONFIDENCE_THRESHOLD if tag == "counting" else CONFIDENCE_THRESHOLD


def select_detections(detections: Iterable[Detection], tag: str) -> dict[str, list[Detection]]:
    """The detections the rules look at, per class, most confident first."""
    threshold = confidence_threshold(tag)
    by_class: dict[str, list[Detection]] = {}
    for detection in detections:
        if detection.score > threshold:
            by_class.setdefault(detection.label, []).append(detection)
    # Python's sort is stable: equal confidences keep the detector's order.
    return {label: sorted(found, key=lambda d: -d.score)[:MAX_PER_CLASS] for label, found in by_class.items()}


def relations(a: Detection, b: Detection) -> set[str]:
    """Where A stands relative to B, allowing for the objects' sizes (image y grows downwards)."""
    centre_a = ((a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2)
    centre_b = ((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2)
    size_a = (abs(a.box[2] - a.box[0]), abs(a.box[3] - a.box[1]))
    size_b = (abs(b.box[2] - b.box[0]), abs(b.box[3] - b.box[1]))
    offset = [centre_a[i] - centre_b[i] for i in range(2)]
    # Overlapping objects: only the part of the offset beyond 10% of their summed sizes counts.
    revised = [math.copysign(max(abs(offset[i]) - POSITION_MARGIN * (size_a[i] + size_b[i]), 0.0), offset[i])
               for i in range(2)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _colours_of(detections: Sequence[Detection], label: str, classify: ColourClassifier | None) -> list[str]:
    if all(d.color is not None for d in detections):
        return [d.color for d in detections]  # type: ignore[misc]
    if classify is None:
        raise ValueError(f"detections of {label!r} carry no colour and no colour classifier was given")
    return list(classify(detections, label))


def judge(row: Mapping[str, Any], detections: Iterable[Detection],
          classify_colours: ColourClassifier | None = None) -> Verdict:
    """GenEval's verdict on one image from all of its detections (any confidence)."""
    found = select_detections(detections, row["tag"])
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []  # per include clause: its detections, or None when it failed
    for clause in row.get("include", []):
        label, count = clause["class"], clause["count"]
        chosen = found.get(label, [])[:count]
        ok = len(chosen) >= count
        if not ok:
            reasons.append(f"expected {label}>={count}, found {len(chosen)}")
        if ok and "color" in clause:
            colours = _colours_of(chosen, label, classify_colours)
            wanted = clause["color"]
            if colours.count(wanted) < count:
                ok = False
                seen = ", ".join(f"{colours.count(c)} {c}" for c in COLOURS if c in colours)
                reasons.append(f"expected {wanted} {label}>={count}, found {colours.count(wanted)} {wanted} ({seen})")
        if ok and "position" in clause:
            relation, target = clause["position"]
            targets = matched[target] if target < len(matched) else None
            if targets is None:
                ok = False
                reasons.append(f"no target for {label} to be {relation}")
            else:
                for obj in chosen:
                    actual = next((relations(obj, t) for t in targets if relation not in relations(obj, t)), None)
                    if actual is not None:
                        ok = False
                        reasons.append(f"expected {label} {relation} target, found "
                                       f"{' and '.join(sorted(actual)) or 'no relation to the'} target")
                        break
        matched.append(chosen if ok else None)
    for clause in row.get("exclude", []):
        label, count = clause["class"], clause["count"]
        if len(found.get(label, [])) >= count:
            reasons.append(f"expected {label}<{count}, found {len(found[label])}")
    return Verdict(correct=not reasons, reason="; ".join(reasons))


def tag_scores(tags: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Each tag's share of correct images, and ``overall``: the mean of the tag scores."""
    totals: dict[str, list[int]] = {}
    for tag, ok in zip(tags, correct, strict=True):
        totals.setdefault(tag, [0, 0])
        totals[tag][0] += int(bool(ok))
        totals[tag][1] += 1
    scores = {tag: hits / n for tag, (hits, n) in totals.items()}
    if scores:
        scores["overall"] = sum(scores.values()) / len(scores)
    return scores


def _whole(value: Any) -> bool:
    """An int that is not a bool (JSON ``true`` would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_row(row: Any, where: str) -> dict[str, Any]:
    """A metadata row with the fields and values the rules read, or a DataError naming the line."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key, kind in (("tag", str), ("prompt", str), ("include", list)):
        if not isinstance(row.get(key), kind):
            raise DataError(f"{where}: {key!r} must be a {kind.__name__}")
    if row["tag"] not in TAGS:  # the tag picks the confidence threshold, and a misspelt one would not fail
        raise DataError(f"{where}: tag {row['tag']!r} is not one of {', '.join(TAGS)}")
    if not isinstance(row.get("exclude", []), list):
        raise DataError(f"{where}: 'exclude' must be a list of {{class, count}} clauses, or left out")
    clauses = [("include", c) for c in row["include"]] + [("exclude", c) for c in row.get("exclude", [])]
    for index, (part, clause) in enumerate(clauses):
        if not (isinstance(clause, dict) and isinstance(clause.get("class"), str)
                and _whole(clause.get("count")) and clause["count"] >= 1):
            raise DataError(f"{where}: every {part} clause needs a 'class' and a whole-number 'count' >= 1")
        if "color" in clause and clause["color"] not in COLOURS:
            raise DataError(f"{where}: colour {clause['color']!r} is not one of {', '.join(COLOURS)}")
        if "position" in clause:
            position = clause["position"]
            if not (isinstance(position, list) and len(position) == 2 and position[0] in RELATIONS
                    and _whole(position[1]) and 0 <= position[1] < index):
                raise DataError(f"{where}: position must be [relation, index of an earlier include clause] "
                                f"with a relation among {', '.join(RELATIONS)}")
    return row


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a GenEval metadata JSONL file, checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"GenEval metadata file not found: {path}")
    rows = []
    for where, record in jsonl_objects(path):
        rows.append(check_row(record, where))
    if not rows:
        raise DataError(f"{path} holds no GenEval rows")
    return rows


def classes_of(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every class a set of rows mentions."""
    return {c["class"] for row in rows for c in [*row.get("include", []), *row.get("exclude", [])]}
