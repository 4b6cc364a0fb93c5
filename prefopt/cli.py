"""The ``prefopt`` command line.

Heavy imports (torch, diffusers) happen only inside the commands that train or
sample, so ``prefopt --help``, ``validate`` and ``plugins`` stay fast and
torch-free. Every user mistake becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from prefopt.errors import PrefoptError, describe_os_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Preference optimisation for diffusion models (DDSPO, Diffusion-DPO, Diffusion-KTO).",
)
pairs_app = typer.Typer(no_args_is_help=True, help="Build and inspect pair datasets.")
app.add_typer(pairs_app, name="pairs")

_state = {"debug": False}

RecipeArg = typer.Argument(..., help="recipe YAML file", show_default=False)
OverridesArg = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=10")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    _state["debug"] = debug


def _registry():
    from prefopt.registry import PluginRegistry

    return PluginRegistry()


def _load(recipe: Path, overrides: Optional[List[str]]):
    from prefopt.recipe import load_recipe

    registry = _registry()
    return registry, load_recipe(recipe, registry, overrides or [])


@app.command()
def validate(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Check a recipe against every plugin's Config, without importing torch."""
    from prefopt.requirements import check_requirements

    registry, resolved = _load(recipe, overrides)
    check_requirements(resolved, registry)
    if resolved.recipe.compare is not None:
        from prefopt.compare import resolve_variants

        resolve_variants(resolved, registry)
    typer.echo(f"{recipe}: ok")


@app.command()
def run(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    resume: bool = typer.Option(False, "--resume", help="continue the run in output_dir from a checkpoint"),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="with --resume: which checkpoint (e.g. step-00000200)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run directory that already holds a run"),
    dry_run: bool = typer.Option(False, "--dry-run", help="resolve and print the plan; load and train nothing"),
) -> None:
    """Run a recipe: (pretrain the reference), build pairs, train, evaluate."""
    from prefopt.stages import run_recipe

    if resume and overwrite:
        raise PrefoptError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    if checkpoint != "latest" and not resume:
        raise PrefoptError("--checkpoint chooses where --resume starts: pass --resume too")
    if not checkpoint.strip():
        raise PrefoptError("--checkpoint names a checkpoint (e.g. step-00000200) or 'latest', not nothing")
    registry, resolved = _load(recipe, overrides)
    if dry_run:
        from prefopt.dry_run import print_plan
        from prefopt.requirements import check_requirements

        check_requirements(resolved, registry)  # run_recipe checks the same before it creates anything
        print_plan(resolved, registry)
        return
    run_recipe(resolved, registry, resume=checkpoint if resume else None, overwrite=overwrite)


@app.command()
def compare(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing comparison"),
) -> None:
    """Run one recipe under several objectives on the same pairs and seeds; write a report."""
    from prefopt.compare import run_compare

    registry, resolved = _load(recipe, overrides)
    run_compare(resolved, registry, overwrite=overwrite)


@app.command()
def plugins() -> None:
    """List every registered plugin by kind: its distribution, what it does, its config fields and defaults."""
    from prefopt.interfaces import KINDS
    from prefopt.reference_doc import describe_fields
    from prefopt.registry import describe

    registry = _registry()
    for kind in KINDS:
        typer.echo(f"{kind}s:")
        for name, cls in registry.all(kind).items():
            typer.echo(f"  {name}  ({cls.__module__}, from {registry.distribution(kind, name)})")
            if describe(cls):
                typer.echo(f"      {describe(cls)}")
            for line in describe_fields(cls.Config):
                typer.echo(f"      {line}")


@app.command("eval")
def evaluate(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    weights: Optional[List[Path]] = typer.Option(
        None, "--weights", help="trained weights: a run's final/ or checkpoints/step-N; repeat for several "
                                "(default: the recipe's final/)"),
    base: bool = typer.Option(True, "--base/--no-base", help="also score the base model, and each run's win rate "
                                                             "over it on the same prompts and seeds"),
    output: Optional[Path] = typer.Option(None, "--output", help="directory for eval.json, per-image results and "
                                                                 "the cached images (default: OUTPUT_DIR/eval)"),
) -> None:
    """Score the base model and trained weights with every evaluator of the recipe (writes eval.json)."""
    from prefopt.evaluation import run_eval

    registry, resolved = _load(recipe, overrides)
    run_eval(resolved, registry, weights or [], include_base=base, output=output)


@app.command()
def bench(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    steps: int = typer.Option(5, help="timed repetitions (each: one fused and one naive step, interleaved; "
                                       "medians reported) after the warm-up steps"),
    output: Optional[Path] = typer.Option(
        None, help="markdown file the result is appended to (default: <output_dir>/bench.md; "
                   "with --data: <output_dir>/bench-data.md)"),
    generation: bool = typer.Option(True, "--generation/--no-generation",
                                    help="also time pair generation (images/s)"),
    data: bool = typer.Option(False, "--data", help="measure the pair data path instead: bytes read per step, "
                                                    "loader pairs/s, data wait (see docs/performance.md)"),
    pairs: int = typer.Option(20000, "--pairs", help="--data: rows of the synthetic pair dataset"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="--data: keep (and reuse) the synthetic "
                                                                     "dataset here instead of a temporary directory"),
) -> None:
    """Time the recipe's training step against the official DDSPO step, and pair generation; append the rows to a file."""
    registry, resolved = _load(recipe, overrides)
    if data:
        from prefopt.data.bench import run_data_bench

        run_data_bench(resolved, registry, pairs=pairs, steps=steps, output=output, data_dir=data_dir,
                       overrides=overrides or [])
        return
    from prefopt.bench import run_bench

    run_bench(resolved, registry, steps=steps, output=output, overrides=overrides or [], generation=generation)


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="run directory whose final/ is uploaded", show_default=False),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub model repository, e.g. user/sd15-ddspo", show_default=False),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
) -> None:
    """Upload a run's final/ (weights, model card, samples) to the Hugging Face Hub; rerun to resume."""
    from prefopt.hub import push_run

    typer.echo(f"pushed {run_dir / 'final'} to {push_run(run_dir, repo_id, private=private)}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="run directory of a LoRA run", show_default=False),
    to: str = typer.Option(..., "--to", help="merged: LoRA fused into a full diffusers pipeline; "
                           "kohya: the LoRA in the kohya/webui key layout (A1111, ComfyUI)", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", help="where to write (default: RUN_DIR/export/...)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing export"),
) -> None:
    """Export a LoRA run's final/ as a merged diffusers pipeline or a kohya-format LoRA file."""
    from prefopt.export import export_run

    typer.echo(f"wrote {export_run(run_dir, to, _registry(), output=output, overwrite=overwrite)}")


@pairs_app.command("build")
def pairs_build(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Build (or resume building) the recipe's pair dataset."""
    from prefopt.stages import build_recipe_pairs

    registry, resolved = _load(recipe, overrides)
    build_recipe_pairs(resolved, registry)


@pairs_app.command("preview")
def pairs_preview(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    count: int = typer.Option(8, min=1, max=100_000, help="rows to print"),
    pretrain: bool = typer.Option(False, "--pretrain", help="the pretraining stage's pair source instead"),
) -> None:
    """Print the first (c, c-) rows the recipe's pair source makes, without loading any model."""
    from prefopt.preview import format_rows, preview_rows
    from prefopt.requirements import check_requirements

    registry, resolved = _load(recipe, overrides)
    if pretrain and resolved.recipe.pretrain is None:
        raise PrefoptError(f"{recipe} has no pretrain stage")
    check_requirements(resolved, registry)
    for line in format_rows(preview_rows(resolved, registry, count, pretrain=pretrain)):
        typer.echo(line)


@pairs_app.command("show")
def pairs_show(
    directory: Path = typer.Argument(..., help="pair dataset directory"),
    recipe: Optional[Path] = typer.Option(
        None, "--recipe", help="recipe whose backbone decodes the pairs (default: the one that built them)"
    ),
    count: int = typer.Option(8, min=1, max=1_000, help="pairs to show (one PNG grid)"),
    output: Optional[Path] = typer.Option(None, help="PNG path (default: DIR/pairs.png)"),
) -> None:
    """Write a PNG grid of decoded pairs with their prompts."""
    from prefopt.pair_grid import backbone_that_made, show_pairs

    if recipe is None:
        backbone = backbone_that_made(directory, _registry())
    else:
        registry, resolved = _load(recipe, [])
        backbone = registry.get("backbone", resolved.recipe.backbone.name)(resolved.config("backbone"))
    path = show_pairs(backbone, directory, count=count, output=output)
    typer.echo(f"wrote {path}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _error(message: str) -> None:
    """Print one `error:` line: control characters a user's input put in it (a key holding
    `\r` or a newline) are shown escaped, so the message stays a single line."""
    typer.echo("error: " + _CONTROL.sub(lambda m: repr(m.group())[1:-1], message), err=True)


def _out_of_memory(exc: BaseException, kinds: set[str]) -> bool:
    """torch's accelerator OutOfMemoryError, Python's MemoryError, torch's CPU allocator giving up, or an
    out-of-memory that reached us as a RuntimeError (a DataLoader worker's, a CUDA or MPS error)."""
    message = str(exc).lower()
    return bool({"OutOfMemoryError", "MemoryError"} & kinds) or (isinstance(exc, RuntimeError) and any(
        sign in message for sign in ("can't allocate memory", "out of memory", "outofmemoryerror")))


def main() -> None:
    try:
        os.getcwd()
    except OSError:  # torch's first import in a deleted directory kills the process (oneMKL), with no message
        _error("the working directory no longer exists; cd to an existing directory")
        sys.exit(2)
    try:
        code = app(standalone_mode=False)
    except PrefoptError as exc:
        if _state["debug"]:
            raise
        _error(str(exc))
        sys.exit(getattr(exc, "exit_code", 2))  # RunStopped (a signal, checkpoint saved): 143
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:
        # Any file prefopt could not read or write (permissions, a full disk, an I/O error)
        # that no closer handler named: the file and the reason, in one line.
        if _state["debug"]:
            raise
        _error(describe_os_error(exc))
        sys.exit(2)
    except Exception as exc:
        # Usage errors (an unknown option, a missing argument). typer bundles its
        # own click, so match the click exception types by name, not by import.
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in kinds:
            _error(f"{exc.format_message()} (see prefopt --help)")
            sys.exit(getattr(exc, "exit_code", 2))
        if "Abort" in kinds:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if _out_of_memory(exc, kinds) and not _state["debug"]:
            # A model, batch or setting larger than the machine: what ran out, and what to lower.
            cause = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            _error(f"out of memory: {cause[:300]} (lower train.batch_size, the resolution or the model's size; "
                   "--debug for the trace)")
            sys.exit(2)
        if "TorchDynamoException" in kinds and not _state["debug"]:
            # train.compile / backbone.compile_sampling on a machine whose compiler toolchain
            # torch cannot use (no C++ compiler, an unsupported GPU): the cause and the way out.
            cause = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            _error(f"torch.compile failed: {cause} (turn off train.compile and backbone.compile_sampling, "
                   "or --debug for the trace)")
            sys.exit(2)
        raise
    # Without standalone mode, click hands back what it would have exited with instead of exiting:
    # Ctrl-C inside a command arrives here as 130, not as KeyboardInterrupt, and exited 0 unseen.
    if code == 130:
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
