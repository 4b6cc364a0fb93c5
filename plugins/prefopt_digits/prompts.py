"""Prompts of the digit world in GenEval's grammar, its six tags, and its metadata layout.

Every prompt is a GenEval metadata entry ``{"tag", "include", "exclude"?, "prompt"}``
with the digits as classes, worded as GenEval words them:

* single_object: "a photo of a 3"
* two_object:    "a photo of a 3 and a 7"
* counting:      "a photo of three 5s" (include count 3, exclude count 4)
* colors:        "a photo of a red 4"
* position:      "a photo of a 2 left of a 9" (the 9 is clause 0, the 2 carries ["left of", 0])
* color_attr:    "a photo of a red 2 and a blue 6"

``python -m prefopt_digits.prompts OUT_DIR`` writes the seeded, disjoint
``train.jsonl`` and ``eval.jsonl`` prompt sets the benchmark ships.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from prefopt_digits.world import CLASSES, COLOURS, GRID, RELATIONS

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
COUNTS = tuple(range(2, GRID * GRID + 1))  # counting asks for 2..4 of one digit: at most the grid's cells
# Prompts per tag in the evaluation set (every tag is scored apart; Overall is their mean).
EVAL_PER_TAG = {"single_object": 5, "two_object": 16, "counting": 12, "colors": 16, "position": 16, "color_attr": 16}
# Prompts per tag in the training set (disjoint from the evaluation set).
TRAIN_PER_TAG = {"single_object": 5, "two_object": 29, "counting": 18, "colors": 34, "position": 64, "color_attr": 64}
SPLIT_SEED = 0
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _noun(clause: dict) -> str:
    colour = clause.get("color")
    return f"a {colour} {clause['class']}" if colour else f"a {clause['class']}"


def render(tag: str, include: list[dict]) -> str:
    """The prompt GenEval words for an entry's include clauses."""
    if any(c.get("position") for c in include):
        anchor, mover = include
        return f"a photo of {_noun(mover)} {mover['position'][0]} {_noun(anchor)}"
    if len(include) == 1 and include[0]["count"] > 1:
        clause = include[0]
        colour = f"{clause['color']} " if clause.get("color") else ""
        return f"a photo of {NUMBERS[clause['count']]} {colour}{clause['class']}s"
    return "a photo of " + " and ".join(_noun(c) for c in include)


def entry(tag: str, include: list[dict]) -> dict:
    record: dict = {"tag": tag, "include": include}
    if tag == "counting":
        clause = include[0]
        record["exclude"] = [{"class": clause["class"], "count": clause["count"] + 1}]
    record["prompt"] = render(tag, include)
    return record


def all_entries(tag: str) -> list[dict]:
    """Every entry of a tag the world can show, in a fixed order."""
    colours = list(COLOURS)
    if tag == "single_object":
        includes = [[{"class": d, "count": 1}] for d in CLASSES]
    elif tag == "two_object":
        includes = [[{"class": a, "count": 1}, {"class": b, "count": 1}] for a, b in itertools.permutations(CLASSES, 2)]
    elif tag == "counting":
        includes = [[{"class": d, "count": n}] for d in CLASSES for n in COUNTS]
    elif tag == "colors":
        includes = [[{"class": d, "count": 1, "color": c}] for d in CLASSES for c in colours]
    elif tag == "position":
        includes = [[{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
                    for a, b in itertools.permutations(CLASSES, 2) for rel in RELATIONS]
    elif tag == "color_attr":
        includes = [[{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
                    for a, b in itertools.permutations(CLASSES, 2)
                    for ca, cb in itertools.permutations(colours, 2)]
    else:
        raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")
    return [entry(tag, include) for include in includes]


def split_entries(seed: int = SPLIT_SEED) -> tuple[list[dict], list[dict]]:
    """(train, eval): per tag, a seeded shuffle of every entry; eval takes the first, train the next.

    Entries are split by meaning, so "a 3 and a 7" and "a 7 and a 3", or
    "a 2 left of a 9" and "a 9 right of a 2", never fall on different sides.
    """
    rng = np.random.default_rng(seed)
    train, evaluation = [], []
    for tag in TAGS:
        groups: dict[frozenset, list[dict]] = {}
        for record in all_entries(tag):
            groups.setdefault(meaning(record), []).append(record)
        keys = list(groups)
        order = rng.permutation(len(keys))
        picked_eval, picked_train = [], []
        for index in order:
            group = groups[keys[index]]
            choice = group[int(rng.integers(len(group)))]
            if len(picked_eval) < EVAL_PER_TAG[tag]:
                picked_eval.append(choice)
            elif len(picked_train) < TRAIN_PER_TAG[tag]:
                picked_train.append(choice)
        evaluation += picked_eval
        train += picked_train
    return train, evaluation


def meaning(record: dict) -> frozenset:
    """What a scene must show, apart from wording: equal for "a 2 left of a 9" and "a 9 right of a 2"."""
    include = record["include"]
    if any(c.get("position") for c in include):
        anchor, mover = include
        relation = mover["position"][0]
        return frozenset({(mover["class"], relation, anchor["class"]),
                          (anchor["class"], OPPOSITE[relation], mover["class"])})
    return frozenset((c["class"], c.get("color"), c["count"]) for c in include)


def random_entry(tag: str, rng: np.random.Generator) -> dict:
    """One entry of a tag, uniformly over the whole grammar (do not modify it: it is shared)."""
    entries = _entries_of(tag)
    return entries[int(rng.integers(len(entries)))]


@lru_cache(maxsize=None)
def _entries_of(tag: str) -> tuple[dict, ...]:
    return tuple(all_entries(tag))


# ---------------------------------------------------------------- imperfect captions

def corrupt(record: dict, rng: np.random.Generator) -> str:
    """A caption of the scene of ``record`` that drops or swaps one attribute, as web captions do.

    drop: a colour word, the second object, or the number; swap: a colour for
    another, a digit for another, a relation for its opposite, or a count by one.
    """
    include = [dict(c) for c in record["include"]]
    tag = record["tag"]
    coloured = [c for c in include if c.get("color")]
    if rng.random() < 0.5:  # drop
        if coloured:
            del coloured[int(rng.integers(len(coloured)))]["color"]
            if tag == "color_attr" and not any(c.get("color") for c in include):
                tag = "two_object"
        elif len(include) == 2:
            kept = dict(include[int(rng.integers(2))])
            kept.pop("position", None)
            include = [kept]
        elif include[0]["count"] > 1:
            include = [{**include[0], "count": 1}]
        else:
            return "a photo"  # nothing left to drop but the object itself
        return render(tag, include)
    # swap
    target = include[int(rng.integers(len(include)))]
    choices = ["class"]
    if target.get("color"):
        choices.append("color")
    if target.get("position"):
        choices.append("position")
    if target["count"] > 1:
        choices.append("count")
    what = choices[int(rng.integers(len(choices)))]
    if what == "class":
        taken = {c["class"] for c in include}
        others = [d for d in CLASSES if d not in taken]
        target["class"] = others[int(rng.integers(len(others)))]
    elif what == "color":
        others = [c for c in COLOURS if c != target["color"]]
        target["color"] = others[int(rng.integers(len(others)))]
    elif what == "position":
        target["position"] = [OPPOSITE[target["position"][0]], target["position"][1]]
    else:
        others = [n for n in COUNTS if n != target["count"]]
        target["count"] = others[int(rng.integers(len(others)))]
    return render(tag, include)


# ---------------------------------------------------------------- files

def write_jsonl(path: Path, records: list[dict]) -> None:
    from prefopt.atomic import write_atomic

    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the digit world's train.jsonl and eval.jsonl prompt sets.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED)
    args = parser.parse_args(argv)
    train, evaluation = split_entries(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "eval.jsonl", evaluation)
    print(f"{len(train)} train and {len(evaluation)} evaluation prompts in {args.out_dir}")


if __name__ == "__main__":
    main()
