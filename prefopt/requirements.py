"""What a recipe's plugins need, checked before anything is loaded or trained.

``prefopt validate``, ``run --dry-run`` and ``run`` call ``check_requirements``:
a pair source that needs prompts the recipe does not give, or a backbone able
to sample (or trained on images) paired with one that is not, fails here, in
one line, rather than after the reference has been pretrained. ``run`` also
runs every evaluator's ``check()`` (its prompt and metadata files) before the
run directory is created; ``validate`` and ``--dry-run`` leave that out, since
shipped recipes name benchmark files a user downloads later.
Nothing here imports torch: ``validate`` must stay light.
"""

from __future__ import annotations

from prefopt.errors import PrefoptError, RecipeError
from prefopt.recipe import ResolvedRecipe
from prefopt.registry import PluginRegistry


def check_requirements(resolved: ResolvedRecipe, registry: PluginRegistry, evaluators: bool = False) -> None:
    """Raise a one-line error for the first thing the recipe's plugins need and cannot get.

    ``evaluators``: also run each evaluator's ``check()`` of the files it reads.
    """
    recipe = resolved.recipe
    backbone = registry.get("backbone", recipe.backbone.name)(resolved.config("backbone"))
    stages = [("pairs", recipe.pairs)]
    if recipe.pretrain is not None:
        stages.append(("pretrain.pairs", recipe.pretrain.pairs))
    for where, pairs in stages:
        source = registry.get("pair_source", pairs.source.name)
        place = f"{resolved.source}: {where}.source {source.name!r}"
        if "prompts" in source.needs and pairs.prompts is None:
            raise RecipeError(f"{place} needs prompts: set {where}.prompts.path")
        if "sampling" in source.needs and not backbone.can_sample():
            raise RecipeError(f"{place} leaves its images to be sampled, but the {backbone.name} backbone "
                              "cannot sample")
        if "images" in source.needs and backbone.data_space != "images":
            raise RecipeError(f"{place} gives images, but the {backbone.name} backbone trains on "
                              f"{backbone.data_space}")
    objectives = [(("objective",), recipe.objective)]
    if recipe.pretrain is not None:
        objectives.append((("pretrain", "objective"), recipe.pretrain.objective))
    for path, component in objectives:
        objective = registry.get("objective", component.name)(resolved.config(*path))
        try:
            backbone.check_sources({p.source for p in objective.predictions()} | set(objective.policies()))
        except RecipeError:
            raise
        except PrefoptError as exc:
            raise RecipeError(f"{resolved.source}: {'.'.join(path)} {component.name!r}: {exc}") from exc
    if not evaluators:
        return
    for i, component in enumerate(recipe.eval):
        evaluator = registry.get("evaluator", component.name)(resolved.config("eval", i))
        try:
            evaluator.check()
        except RecipeError:
            raise
        except PrefoptError as exc:
            raise PrefoptError(f"eval.{i} ({component.name}): {exc}") from exc
