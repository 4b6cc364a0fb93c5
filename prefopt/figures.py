"""Image grids as PNG files: pair grids, evaluators' sample grids, comparison grids.

One drawing routine for every grid of images prefopt writes, so they look
alike, and one way to write any figure: whole or not at all (a run killed
while a figure is saved leaves the previous figure or none, never half a PNG).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any, Sequence

from prefopt.atomic import write_atomic
from prefopt.errors import file_errors


def image_grid(rows: Sequence[Sequence[Any]], path: Path, **layout) -> Path:
    """Write ``rows[r][c]`` (PIL images or arrays) as a grid PNG at ``path`` (see ``grid_png``)."""
    with file_errors(path, "write"):
        write_atomic(Path(path), grid_png(rows, **layout))
    return Path(path)


def grid_png(rows: Sequence[Sequence[Any]], *, row_labels: Sequence[str] = (), column_titles: Sequence[str] = (),
             cell_titles: Sequence[Sequence[str]] = (), title: str | None = None,
             cell_inches: tuple[float, float] = (2.2, 2.4), dpi: int = 120) -> bytes:
    """``rows[r][c]`` drawn as one grid, as PNG bytes; a short row leaves its last cells empty.

    ``row_labels[r]`` is written left of row r, ``column_titles[c]`` above
    column c (wrapped), ``cell_titles[r][c]`` above one cell, ``title`` above all.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max([len(column_titles), *(len(row) for row in rows)])
    fig, axes = plt.subplots(len(rows), columns, figsize=(cell_inches[0] * columns, cell_inches[1] * len(rows)),
                             squeeze=False)
    for r, images in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            if c < len(images):
                ax.imshow(images[c])
            ax.set_xticks([])  # no ticks, but the frame and the row label stay
            ax.set_yticks([])
            if r < len(cell_titles) and c < len(cell_titles[r]):
                ax.set_title(cell_titles[r][c], fontsize=7)
            elif r == 0 and c < len(column_titles):
                ax.set_title(textwrap.fill(column_titles[c], 24), fontsize=7)
        if r < len(row_labels):
            axes[r][0].set_ylabel(row_labels[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return figure_png(fig, dpi)


def figure_png(fig, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return image.getvalue()


def save_figure(fig, path: Path, dpi: int) -> Path:
    """Write a matplotlib figure as a PNG at ``path``, whole or not at all; the figure is closed."""
    with file_errors(path, "write"):
        write_atomic(Path(path), figure_png(fig, dpi))
    return Path(path)
