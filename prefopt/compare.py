"""``prefopt compare``: one recipe under several variants, on the same pairs and seeds.

For each seed the reference is pretrained once and the pair dataset built once;
every variant (an objective, a β, a pair source ...) then trains from that same
reference on those same pairs, and the recipe's evaluators score it. Outputs in
output_dir: ``results.csv`` and ``report.md`` (variant × metric, mean ± std over
seeds), ``comparison.png`` when an evaluator can draw one, and each variant's
run directory under ``<variant>/seed-<s>/``.
"""

from __future__ import annotations

import copy
import csv
import io
import statistics
from pathlib import Path
from typing import Any

from prefopt.atomic import strict_json, write_atomic
from prefopt.errors import PrefoptError, RecipeError, file_errors
from prefopt.paths import resolve_recipe_paths
from prefopt.recipe import ResolvedRecipe, resolve


def merge_variant(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply a variant: a section with a ``name`` replaces the component, others merge."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and "name" not in value and isinstance(out.get(key), dict):
            out[key] = merge_variant(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_dir(root: Path, name: str, seed: int) -> Path:
    """``<root>/<name>/seed-<seed>``, refused unless it lies inside ``root``.

    Variant names are checked when the recipe is validated (plain names only);
    this is the second guard, on the path itself, before anything is written or cleared.
    """
    path = root / name / f"seed-{seed}"
    base = root.resolve()
    resolved_path = path.resolve()
    if resolved_path.parent.parent != base or name in ("", ".", ".."):
        raise RecipeError(f"compare variant {name!r} would write outside {root} ({resolved_path})")
    return path


def _variant_recipe(resolved: ResolvedRecipe, registry, name: str, overrides: dict, seed: int, root: Path):
    base = resolved.to_dict()
    base.pop("compare", None)
    if not isinstance(overrides, dict):
        raise RecipeError(f"{resolved.source}: compare.variants.{name} must be a section of overrides")
    data = merge_variant(base, overrides)
    data["seed"] = seed
    data["output_dir"] = str(variant_dir(root, name, seed))
    variant = resolve(data, registry, where=f"{resolved.source} (variant {name})")
    return resolve_recipe_paths(variant, Path(resolved.source).parent)  # a variant's own paths: the same rule


def shared_pairs_dir(resolved: ResolvedRecipe, variant: str, root: Path, seed: int) -> Path | None:
    """Variants share one pair dataset per seed unless they change the pairs section."""
    return None if "pairs" in resolved.recipe.compare.variants[variant] else root / f"seed-{seed}" / "pairs"


def resolve_variants(resolved: ResolvedRecipe, registry) -> dict[tuple[str, int], ResolvedRecipe]:
    """Every (variant, seed) recipe, validated; raises on the first bad variant."""
    compare = resolved.recipe.compare
    root = Path(resolved.recipe.output_dir)
    return {(name, seed): _variant_recipe(resolved, registry, name, overrides, seed, root)
            for seed in compare.seeds for name, overrides in compare.variants.items()}


def summarise(results: dict[str, list[dict[str, float]]]) -> tuple[list[str], list[dict[str, str]]]:
    metrics = sorted({m for runs in results.values() for run in runs for m in run})
    rows = []
    for variant, runs in results.items():
        row = {"variant": variant, "seeds": str(len(runs))}
        for metric in metrics:
            values = [run[metric] for run in runs if metric in run]
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_mean"], row[f"{metric}_std"] = f"{mean:.4f}", f"{std:.4f}"
        rows.append(row)
    return metrics, rows


def write_report(root: Path, metrics: list[str], rows: list[dict[str, str]], seeds: list[int],
                 figure: Path | None) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with file_errors(root / "results.csv", "write"):
        write_atomic(root / "results.csv", table.getvalue().encode())
    lines = ["# Comparison", "", f"Mean ± std over seeds {seeds}.", "",
             "| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row in rows:
        cells = [f"{row[m + '_mean']} ± {row[m + '_std']}" for m in metrics]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    if figure is not None:
        lines += ["", f"![comparison]({figure.name})"]
    with file_errors(root / "report.md", "write"):
        write_atomic(root / "report.md", ("\n".join(lines) + "\n").encode())


def run_compare(resolved: ResolvedRecipe, registry, overwrite: bool = False) -> Path:
    """Every variant and seed, holding the comparison's directory throughout."""
    from prefopt.locking import hold
    from prefopt.accelerate_setup import process_state

    compare = resolved.recipe.compare
    if compare is None:
        raise RecipeError(f"{resolved.source}: prefopt compare needs a `compare:` section with variants")
    # Resolve every variant first: a typo in the last one must not cost the first ones' runs.
    plans = resolve_variants(resolved, registry)
    root = Path(resolved.recipe.output_dir)
    with hold(root, "comparison directory", process_state()):
        if (root / "results.csv").exists() and not overwrite:
            raise PrefoptError(f"{root} already holds a comparison; pass --overwrite to replace it")
        if not overwrite:
            _refuse_filled_variant_dirs(plans)
        return _compare_held(resolved, registry, plans, root, overwrite)


def _refuse_filled_variant_dirs(plans) -> None:
    """Without --overwrite nothing already in a variant's directory is cleared: refuse before the first run,
    not after some variants have trained."""
    from prefopt.rundir import contents

    filled = [Path(plan.recipe.output_dir) for plan in plans.values() if contents(Path(plan.recipe.output_dir))]
    if filled:
        raise PrefoptError(f"{filled[0]} is not empty ({len(filled)} of the {len(plans)} variant run directories "
                           "are); pass --overwrite to replace them or choose another output_dir")


def _compare_held(resolved: ResolvedRecipe, registry, plans, root: Path, overwrite: bool) -> Path:
    from prefopt.compare_figures import extend_compare_report
    from prefopt.rundir import link_refusal
    from prefopt.stages import pretrain_reference, run_recipe

    compare = resolved.recipe.compare

    results: dict[str, list[dict[str, float]]] = {name: [] for name in compare.variants}
    for seed in compare.seeds:
        shared = root / f"seed-{seed}"  # the seed's shared reference and pairs: never written through a link
        if shared.is_symlink():
            raise link_refusal(shared)
        reference = None
        if resolved.recipe.pretrain is not None:
            seeded = resolve({**resolved.to_dict(), "seed": seed}, registry, where=str(resolved.source))
            reference = pretrain_reference(seeded, registry, root / f"seed-{seed}", resume=False)
        for name in compare.variants:
            print(f"== {name} (seed {seed})")
            results[name].append(run_recipe(plans[name, seed], registry, overwrite=overwrite, reference=reference,
                                            pairs_dir=shared_pairs_dir(resolved, name, root, seed)))

    figure = _figure(resolved, registry, root, compare, seed=compare.seeds[0])
    metrics, rows = summarise(results)
    write_report(root, metrics, rows, compare.seeds, figure)
    extend_compare_report(resolved, registry, root)  # bar charts with intervals, per-category tables, sample grid
    with file_errors(root / "results.json", "write"):
        write_atomic(root / "results.json", (strict_json(results, indent=1) + "\n").encode())
    print(f"comparison written: {root / 'report.md'}")
    return root


def _figure(resolved: ResolvedRecipe, registry, root: Path, compare, seed: int) -> Path | None:
    """Ask the chosen evaluator (or the first that can) for a side-by-side figure."""
    for i, component in enumerate(resolved.recipe.eval):
        if compare.figure not in (None, component.name):
            continue
        evaluator = registry.get("evaluator", component.name)(resolved.config("eval", i))
        if hasattr(evaluator, "comparison_figure"):
            runs = {name: variant_dir(root, name, seed) for name in compare.variants}
            return evaluator.comparison_figure(runs, root / f"seed-{seed}", root / "comparison.png")
    return None
