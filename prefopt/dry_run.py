"""``prefopt run --dry-run``: the plan of a run, printed as YAML; nothing is loaded."""

from __future__ import annotations

from pathlib import Path

import yaml

from prefopt.recipe import ResolvedRecipe


def print_plan(resolved: ResolvedRecipe, registry) -> None:
    """``--dry-run``: what the run would load, build and train; nothing is loaded."""
    recipe = resolved.recipe
    backbone = registry.get("backbone", recipe.backbone.name)(resolved.config("backbone"))
    run_dir = Path(recipe.output_dir)
    plan = {
        "output_dir": str(run_dir),
        "backbone": {"name": recipe.backbone.name, **backbone.describe()},
        "pretrain": None if recipe.pretrain is None else {
            "objective": recipe.pretrain.objective.name, "steps": recipe.pretrain.train.max_steps,
            "pairs": recipe.pretrain.pairs.source.name},
        "pairs": {"source": recipe.pairs.source.name, "dir": str(recipe.pairs.dir or run_dir / "pairs"),
                  "prompts": recipe.pairs.prompts.path if recipe.pairs.prompts else None},
        "objective": resolved.to_dict()["objective"],
        "train": {k: v for k, v in recipe.train.model_dump(mode="json").items()
                  if k in ("max_steps", "batch_size", "grad_accum", "lr", "scale_lr", "mixed_precision", "optimizer")},
        "eval": [c.name for c in recipe.eval],
    }
    print(yaml.safe_dump({"plan": plan}, sort_keys=False), end="")
