"""The evaluation stage of ``prefopt run``: the recipe's evaluators on the trained backbone, into ``eval.json``.

(``prefopt eval``, which scores any weights with intervals and win rates, is
:mod:`prefopt.evaluation`.)
"""

from __future__ import annotations

from pathlib import Path

from prefopt.accelerate_setup import process_state
from prefopt.atomic import strict_json, write_atomic
from prefopt.errors import PrefoptError, describe_os_error, file_errors
from prefopt.recipe import ResolvedRecipe


def evaluate_run(resolved: ResolvedRecipe, registry, backbone, run_dir: Path) -> dict:
    """Run the recipe's evaluators on the main process (others wait) and write eval.json."""
    state = process_state()
    results: dict[str, float] = {}
    if not state.is_main_process:
        state.wait_for_everyone()
        return results
    for i, component in enumerate(resolved.recipe.eval):
        evaluator = registry.get("evaluator", component.name)(resolved.config("eval", i))
        try:
            scores = evaluator.evaluate(backbone, str(run_dir), resolved.recipe.seed)
        except OSError as exc:  # a full disk or a file it cannot read, named
            where = "" if exc.filename is not None else f" (writing in {run_dir})"
            raise PrefoptError(f"eval.{i} ({component.name}): {describe_os_error(exc)}{where}") from exc
        clash = sorted(set(scores) & set(results))
        if clash:  # e.g. CLIP score and PickScore both under the default prefix
            raise PrefoptError(f"eval.{i} ({component.name}) reports {clash[0]!r} again; give it another prefix")
        results.update(scores)
    if resolved.recipe.eval:
        with file_errors(run_dir / "eval.json", "write"):
            write_atomic(run_dir / "eval.json", (strict_json(results, indent=1) + "\n").encode())
        for key, value in results.items():
            print(f"  {key}: {value:.4f}")
    state.wait_for_everyone()
    return results
