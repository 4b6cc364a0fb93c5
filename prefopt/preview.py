"""``prefopt pairs preview``: the first rows a recipe's pair source makes, read without loading any model.

The rows are what the builder would get from the same source, prompts and seed:
their prompt c, their degraded prompt c- and their sampling seed. Images are
left out: given ones are only named, sampled ones do not exist yet.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from prefopt.recipe import ResolvedRecipe
from prefopt.registry import PluginRegistry


def preview_rows(resolved: ResolvedRecipe, registry: PluginRegistry, count: int, pretrain: bool = False) -> list:
    """The first ``count`` PromptPair rows of the recipe's (or its pretraining stage's) pair source."""
    recipe = resolved.recipe
    pairs_cfg = recipe.pretrain.pairs if pretrain else recipe.pairs
    path = ("pretrain", "pairs", "source") if pretrain else ("pairs", "source")
    source = registry.get("pair_source", pairs_cfg.source.name)(resolved.config(*path))
    prompts = None
    if pairs_cfg.prompts:
        from prefopt.data.prompts import load_prompts

        prompts = load_prompts(pairs_cfg.prompts, base_dir=Path(resolved.source).parent)
    return list(islice(iter(source.pairs(prompts, recipe.seed)), count))


def _given(value) -> str:
    if value is None:
        return "sampled"
    return str(value) if isinstance(value, (str, Path)) else f"given {type(value).__name__}"


def format_rows(rows: list) -> list[str]:
    """One line per row: index, seed, c, c-, and where its images come from."""
    lines = []
    for i, row in enumerate(rows):
        loser = f"winner of row {row.loser_from}" if row.loser_from is not None else _given(row.loser)
        lines.append(f"{i:>4}  seed {row.seed:<10}  c: {row.prompt!r}")
        lines.append(f"{'':>4}  {'':<15}  c-: {row.degraded!r}  (winner: {_given(row.winner)}; loser: {loser})")
    return lines
