"""The figures and tables ``prefopt compare`` adds to its report.md, read back from its runs' evaluations.

Every image evaluator writes a ``<prefix>_results.jsonl`` into the run directory
(one record per model and row: prompt, seed, group, image, per-image scores).
From those of every variant and seed this module draws ``metrics.png`` (means
with 95% bootstrap intervals), ``samples.png`` (the same prompts and seeds
across methods) and, for grouped evaluators such as GenEval, a method × group
table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefopt.atomic import write_atomic
from prefopt.data.jsonl import jsonl_objects
from prefopt.errors import DataError
from prefopt.figures import save_figure
from prefopt.evaluation import ImageEvaluator, bootstrap_interval, group_means, grouped_mean
from prefopt.interfaces import Evaluator


def read_results(path: Path) -> list[dict]:
    """The records of a ``<prefix>_results.jsonl`` (none if absent), with their image paths made whole.

    Written by this same command, but read back as any file: a damaged record is one line naming
    it, and an image path that leads out of the run directory is not drawn from.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for where, record in jsonl_objects(path):
        scores = record.get("scores")
        if not (isinstance(record.get("model"), str) and isinstance(record.get("prompt"), str)
                and isinstance(record.get("group", ""), str)
                and isinstance(scores, dict) and all(_is_number(v) for v in scores.values())):
            raise DataError(f"{where} is damaged (a record needs a model, a prompt, numeric scores and a text group); "
                            "run the comparison again with --overwrite")
        image = record.get("image")
        if image is not None:
            whole = (path.parent / str(image)).resolve()
            record["image"] = str(whole) if whole.is_relative_to(path.parent.resolve()) else None
        records.append(record)
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pooled(records: list[dict], model: str, metric: str) -> tuple[list[float], list[str | None]]:
    chosen = [r for r in records if r["model"] == model and metric in r.get("scores", {})]
    return [r["scores"][metric] for r in chosen], [r.get("group") for r in chosen]


def compare_report(root: Path, runs: dict[str, list[Path]], evaluators: Sequence[Evaluator]) -> list[str]:
    """Figures and tables of a comparison from its runs' ``<prefix>_results.jsonl``; returns report lines.

    ``runs``: variant -> its run directories (one per seed). Writes
    ``metrics.png`` (one panel per per-image metric: the reference and each
    variant, with 95% bootstrap intervals over every seed's images),
    ``samples.png`` (the first image of each prompt, the same seed, one row per
    method) and, for grouped evaluators (GenEval), a variant × group table.
    """
    lines: list[str] = []
    panels: dict[str, dict[str, tuple[float, float, float]]] = {}
    grid: dict[str, list] = {}
    titles: list[str] = []
    for evaluator in (e for e in evaluators if isinstance(e, ImageEvaluator)):
        prefix = evaluator.prefix
        records = {variant: [r for d in dirs for r in read_results(Path(d) / f"{prefix}_results.jsonl")]
                   for variant, dirs in runs.items()}
        records = {variant: found for variant, found in records.items() if found}
        if not records:
            continue
        metrics = list(dict.fromkeys(m for found in records.values() for r in found for m in r.get("scores", {})))
        # Every variant draws the reference on the same seeds: its rows are taken from the first that has them.
        with_reference = next((found for found in records.values() if any(r["model"] == "reference" for r in found)),
                              None)
        methods = ([("base model", with_reference, "reference")] if with_reference else []) + \
                  [(variant, found, "student") for variant, found in records.items()]
        for metric in metrics:
            bars = {}
            for label, found, model in methods:
                values, groups = _pooled(found, model, metric)
                if values:
                    low, high = bootstrap_interval(values, groups)
                    bars[label] = (grouped_mean(values, groups), low, high)
            panels[f"{prefix}/{metric}"] = bars
        if metrics:
            lines += _group_table(prefix, metrics[0], methods)
        if not grid:
            grid, titles = _sample_grid(methods)
    if panels:
        _bar_chart(panels, root / "metrics.png")
        lines += ["", "Means with 95% bootstrap intervals over every seed's images:", "", "![metrics](metrics.png)"]
    if grid:
        from prefopt.figures import image_grid

        image_grid(list(grid.values()), root / "samples.png", row_labels=list(grid), column_titles=titles)
        lines += ["", "The same prompts and seeds across methods:", "", "![samples](samples.png)"]
    return lines


def _group_table(prefix: str, metric: str, methods) -> list[str]:
    """Method × group means of a grouped evaluator's first metric (GenEval: tag scores and Overall)."""
    groups = list(dict.fromkeys(r["group"] for _, found, _ in methods for r in found if r.get("group")))
    if not groups:
        return []
    lines = ["", f"## {prefix} per category ({metric})", "",
             "| method | " + " | ".join(groups) + f" | {metric} |", "|---" * (len(groups) + 2) + "|"]
    for label, found, model in methods:
        values, row_groups = _pooled(found, model, metric)
        means = group_means(values, row_groups)
        cells = [f"{means[g]:.4f}" if g in means else "" for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {grouped_mean(values, row_groups):.4f} |")
    return lines


def _sample_grid(methods) -> tuple[dict[str, list], list[str]]:
    """The first image of each prompt (first seed of the run) for each method, from the results' image paths."""
    grid: dict[str, list] = {}
    titles: list[str] = []
    for label, found, model in methods:
        first: dict[str, dict] = {}
        for record in found:
            if record["model"] == model:
                first.setdefault(record["prompt"], record)
        chosen = list(first.values())[:8]
        images = [_open_image(r.get("image")) for r in chosen]
        if not chosen or any(image is None for image in images):
            continue  # a run whose images were deleted or damaged is left out of the grid
        titles = titles or [r["prompt"] for r in chosen]
        grid[label] = images
    return grid, titles


def _open_image(path: str | None):
    """The RGB image at ``path``; None if there is none or it does not decode."""
    from PIL import Image

    if path is None or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError):  # what PIL raises for a damaged or foreign file
        return None


def _bar_chart(panels: dict[str, dict[str, tuple[float, float, float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (metric, bars) in zip(axes.flat, panels.items()):
        labels = list(bars)
        means = [bars[k][0] for k in labels]
        errors = [[bars[k][0] - bars[k][1] for k in labels], [bars[k][2] - bars[k][0] for k in labels]]
        ax.bar(range(len(labels)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def extend_compare_report(resolved, registry, root: Path) -> None:
    """Add the evaluation figures and per-category tables of a finished comparison to its report.md."""
    compare = resolved.recipe.compare
    runs = {name: [root / name / f"seed-{seed}" for seed in compare.seeds] for name in compare.variants}
    evaluators = [registry.get("evaluator", c.name)(resolved.config("eval", i))
                  for i, c in enumerate(resolved.recipe.eval)]
    lines = compare_report(root, runs, evaluators)
    if lines:
        report = root / "report.md"
        write_atomic(report, (report.read_text() + "\n".join(lines) + "\n").encode())
