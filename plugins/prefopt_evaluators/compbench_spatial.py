"""T2I-CompBench's 2D spatial rule, apart from any detector: a prompt's two objects and relation, detections in,
a score in [0, 1] out.

T2I-CompBench (Huang et al., 2023, Sec. 3.2; its ``UniDet_eval/2D_spatial_eval.py``) judges a spatial prompt
such as "a cat on the left of a dog" by what an object detector (UniDet) finds. The rule, restated:

* the relation is the first of ``on side of``, ``next to``, ``near``, ``on the left of``, ``on the right of``,
  ``on the bottom of``, ``on the top of`` that the prompt contains; the first object is the one before it, the
  second the one after it; the words girl, boy, man and woman are looked up as ``person``;
* the detector keeps detections with a confidence above 0.5, and each object is its class's most confident
  detection;
* both objects found: the score is ``0.25·c₁ + 0.25·c₂ + 0.5·p``, with ``c`` the two confidences and ``p`` the
  position score below; one found: ``0.25·c`` of it; none: 0; a score below 0.5 becomes 0 (so an image with
  one object missing scores 0);
* the position score compares the box centres, ``dx = x₂ − x₁`` and ``dy = y₂ − y₁`` (image y grows downwards),
  and the boxes' IoU. "left of": ``dx > 0`` and ``|dx| > |dy|``, then 1 when IoU < 0.1, else ``0.1 / IoU``;
  "right of" the same with ``dx < 0``; "on the top of" with ``dy > 0`` and ``|dy| > |dx|``; "on the bottom of"
  with ``dy < 0``; otherwise 0. "next to", "near", "on side of": 1 when ``|dx| < 150`` or ``|dy| < 150``,
  else ``150 / max(|dx|, |dy|)``;
* distances are in pixels of the image as UniDet saw it: resized so that its shorter side is 479 with its
  longer side at most 480 (512 × 512 images: 479 × 479). This module scales boxes to that frame, so the
  150-pixel threshold means the same for any image size;
* the benchmark's score is the mean over all images.

Differences from the benchmark's script, each on inputs its spatial files do not hold: objects are the words
between an article and the relation (the script takes spaCy's first and last noun, the same on the benchmark's
one-noun objects), so a two-word class ("teddy bear") is one object; a prompt outside the grammar, or with
"on top of" (which the script finds but scores 0 by its missing branch), is refused instead of scored 0; two
empty boxes have IoU 0 (the script divides by zero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from prefopt.errors import DataError
from prefopt_evaluators.geneval_rules import Detection

CONFIDENCE_THRESHOLD = 0.5  # UniDet's test threshold in the benchmark (a detection needs more)
IOU_THRESHOLD = 0.1
NEAR_DISTANCE = 150.0  # pixels of UniDet's input frame
FRAME_SHORT_SIDE, FRAME_LONG_SIDE = 479, 480  # the benchmark's Resize(size=479, max_size=480) before UniDet
SIDEWAYS = ("left", "right")
# The benchmark's relation vocabulary, in the order it searches a prompt for them, with the short names used here.
RELATIONS = {"on side of": "near", "next to": "near", "near": "near", "on the left of": "left",
             "on the right of": "right", "on the bottom of": "bottom", "on the top of": "top"}
PERSON_WORDS = {"girl": "person", "boy": "person", "man": "person", "woman": "person"}
_ARTICLE = r"(?:(?:a|an|the)\s+)?"
_GRAMMAR = re.compile(rf"^{_ARTICLE}(?P<first>.+?)\s+(?P<relation>{'|'.join(RELATIONS)})\s+{_ARTICLE}"
                      r"(?P<second>.+?)\s*\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class SpatialPrompt:
    """The two objects of a spatial prompt and the relation of the first to the second (a RELATIONS key)."""

    first: str
    relation: str
    second: str

    def classes(self, aliases: Mapping[str, str]) -> tuple[str, str]:
        """The detector classes of the two objects: the user's aliases, then the benchmark's person words."""
        return tuple(aliases.get(o, PERSON_WORDS.get(o, o)) for o in (self.first, self.second))  # type: ignore


def parse_spatial(prompt: str, where: str) -> SpatialPrompt:
    """``a {object} {relation} a {object}``, or a DataError naming ``where``."""
    text = " ".join(prompt.split())
    if re.search(r"\bon top of\b", text, re.IGNORECASE):
        raise DataError(f"{where}: {prompt!r} says 'on top of', which T2I-CompBench's rule scores 0; "
                        "write 'on the top of'")
    match = _GRAMMAR.match(text)
    if match is None:
        raise DataError(f"{where}: {prompt!r} is not a T2I-CompBench spatial prompt 'a <object> <relation> a "
                        f"<object>' with a relation among: {', '.join(RELATIONS)}")
    return SpatialPrompt(match["first"].lower(), match["relation"].lower(), match["second"].lower())


def frame_scale(width: float, height: float) -> float:
    """Image pixels -> pixels of the benchmark's detector input (shorter side 479, longer at most 480)."""
    return min(FRAME_SHORT_SIDE / min(width, height), FRAME_LONG_SIDE / max(width, height))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    overlap = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def position_score(relation: str, first: Sequence[float], second: Sequence[float], scale: float = 1.0) -> float:
    """How well box ``first`` stands in ``relation`` to box ``second`` (x0, y0, x1, y1 image pixels), in [0, 1].

    ``scale`` takes image pixels to the benchmark's detector frame (``frame_scale``); only the "near" distance
    depends on it (IoU and the |dx| / |dy| comparisons are scale-free).
    """
    kind = RELATIONS[relation]
    dx = scale * ((second[0] + second[2]) - (first[0] + first[2])) / 2
    dy = scale * ((second[1] + second[3]) - (first[1] + first[3])) / 2
    if kind == "near":
        if abs(dx) < NEAR_DISTANCE or abs(dy) < NEAR_DISTANCE:
            return 1.0
        return NEAR_DISTANCE / max(abs(dx), abs(dy))
    along, across = (dx, dy) if kind in SIDEWAYS else (dy, dx)
    # "left of"/"on the top of": the second object lies further right/down, so the offset is positive.
    toward = along > 0 if kind in ("left", "top") else along < 0
    if not (toward and abs(along) > abs(across)):
        return 0.0
    overlap = iou(first, second)
    return 1.0 if overlap < IOU_THRESHOLD else IOU_THRESHOLD / overlap


def most_confident(detections: Iterable[Detection]) -> dict[str, Detection]:
    """Each class's most confident detection above the threshold (the first of equals, as the detector gave them)."""
    best: dict[str, Detection] = {}
    for detection in detections:
        if detection.score > CONFIDENCE_THRESHOLD and (
                detection.label not in best or detection.score > best[detection.label].score):
            best[detection.label] = detection
    return best


@dataclass
class SpatialVerdict:
    score: float
    confidences: list[float | None]  # each object's detection confidence, None when not found
    position: float | None  # the position score, None unless both objects were found


def judge_spatial(prompt: SpatialPrompt, detections: Iterable[Detection], image_size: tuple[float, float],
                  aliases: Mapping[str, str] | None = None) -> SpatialVerdict:
    """The benchmark's score of one image (``image_size``: width, height) for its spatial prompt."""
    best = most_confident(detections)
    found = [best.get(label) for label in prompt.classes(aliases or {})]
    confidences = [d.score if d is not None else None for d in found]
    position = None
    if found[0] is not None and found[1] is not None:
        position = position_score(prompt.relation, found[0].box, found[1].box, frame_scale(*image_size))
        score = 0.25 * found[0].score + 0.25 * found[1].score + 0.5 * position
    else:
        score = 0.25 * next((d.score for d in found if d is not None), 0.0)
    return SpatialVerdict(score if score >= 0.5 else 0.0, confidences, position)
