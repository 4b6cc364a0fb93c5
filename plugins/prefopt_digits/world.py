"""The digit-scenes world: scikit-learn's bundled handwritten digits, tinted and placed on a grid.

A scene is a 16×16 RGB canvas cut into a 2×2 grid of 8×8 cells; each object
is one 8×8 digit of ``sklearn.datasets.load_digits`` (intensity 0..16) scaled
onto one of five colours, on a black background. Objects are described in
GenEval's metadata layout (``{"class", "count", "color"?, "position"?}``),
with the digits "0".."9" as the classes.

The 1,797 source digits are split once, stratified by class, into a
``generator`` half (what scenes for training and testing are composed from)
and a ``held_out`` half (what the scorer's classifier is trained on), so the
scorer is measured on handwriting it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

CELL = 8  # pixels per cell side (the digits' native size)
GRID = 2  # cells per canvas side
CANVAS = CELL * GRID
CLASSES = tuple(str(d) for d in range(10))
# Five of GenEval's ten colour names, far apart in RGB so a pixel average tells them apart.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "yellow": (1.0, 0.9, 0.1),
    "green": (0.1, 0.85, 0.15),
    "blue": (0.15, 0.3, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SPLIT_SEED = 0  # the generator / held-out split is part of the benchmark's definition: never change it
Split = Literal["generator", "held_out"]


@dataclass(frozen=True)
class Placed:
    """One object of a scene: a digit class in a grid cell, in a colour."""

    digit: str
    colour: str
    cell: int  # row-major: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right


def cell_row_col(cell: int) -> tuple[int, int]:
    return divmod(cell, GRID)


def cell_box(cell: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a cell in canvas pixels (x1, y1 exclusive)."""
    row, col = cell_row_col(cell)
    return col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL


@lru_cache(maxsize=None)
def digits(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(images in [0, 1] of shape (N, 8, 8), labels (N,)) of one half of the source digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    gen_x, held_x, gen_y, held_y = train_test_split(
        images, data.target, test_size=0.5, stratify=data.target, random_state=SPLIT_SEED
    )
    return (gen_x, gen_y) if split == "generator" else (held_x, held_y)


def compose(objects: list[Placed], rng: np.random.Generator, split: Split = "generator") -> np.ndarray:
    """An (H, W, 3) float canvas in [0, 1]: each object a random digit image of its class, tinted."""
    images, labels = digits(split)
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32)
    for obj in objects:
        pool = np.flatnonzero(labels == int(obj.digit))
        stroke = images[rng.choice(pool)]
        x0, y0, x1, y1 = cell_box(obj.cell)
        canvas[y0:y1, x0:x1] = stroke[:, :, None] * np.asarray(COLOURS[obj.colour], dtype=np.float32)
    return canvas


# ---------------------------------------------------------------- scenes for a GenEval entry

RELATIONS = ("left of", "right of", "above", "below")


def _position_cells(relation: str, rng: np.random.Generator) -> tuple[int, int]:
    """(cell of the object that stands in ``relation``, cell of the one it is relative to)."""
    line = int(rng.integers(GRID))
    if relation in ("left of", "right of"):
        a_col, b_col = (0, 1) if relation == "left of" else (1, 0)
        return line * GRID + a_col, line * GRID + b_col
    a_row, b_row = (0, 1) if relation == "above" else (1, 0)
    return a_row * GRID + line, b_row * GRID + line


def scene_for(entry: dict, rng: np.random.Generator) -> list[Placed]:
    """Objects that satisfy a GenEval metadata entry (its include clauses), in free cells.

    Unspecified colours are drawn at random; a clause with a ``position``
    [relation, k] is placed beside the object of clause k along a grid line.
    """
    include = entry["include"]
    objects: list[Placed] = []
    positioned = [c for c in include if c.get("position")]
    if positioned:
        if len(include) != 2 or any(c["count"] != 1 for c in include):
            raise ValueError("a position entry has two single objects")
        anchor, mover = (include[1], include[0]) if include[0].get("position") else (include[0], include[1])
        mover_cell, anchor_cell = _position_cells(mover["position"][0], rng)
        for clause, cell in ((anchor, anchor_cell), (mover, mover_cell)):
            objects.append(Placed(clause["class"], clause.get("color") or _random_colour(rng), cell))
        return objects
    total = sum(c["count"] for c in include)
    if total > GRID * GRID:
        raise ValueError(f"{total} objects do not fit in {GRID * GRID} cells")
    cells = rng.permutation(GRID * GRID)[:total].tolist()
    for clause in include:
        for _ in range(clause["count"]):
            objects.append(Placed(clause["class"], clause.get("color") or _random_colour(rng), cells.pop()))
    return objects


def _random_colour(rng: np.random.Generator) -> str:
    names = list(COLOURS)
    return names[int(rng.integers(len(names)))]


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return (np.clip(canvas, 0.0, 1.0) * 255.0).round().astype(np.uint8)
