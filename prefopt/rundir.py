"""The run directory: what a fresh run, ``--overwrite`` and ``--resume`` may do with it, and ``final/``.

A run directory holds ``recipe.resolved.yaml`` and ``run.json`` (the run's id)
from the start, then ``metrics.jsonl``, ``checkpoints/``, ``final/`` and the
evaluation outputs, and, by default, ``pairs/`` and the pretrained
``reference/``. Every function here runs while the command holds the directory
(:mod:`prefopt.locking`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from prefopt.atomic import replace_dir, write_atomic, write_failure
from prefopt.checksums import new_run_id, run_id_of, seal, verify, write_run_record
from prefopt.errors import PrefoptError, file_errors
from prefopt.locking import is_lock_file

log = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.yaml"
# Fields that change nothing a run computes: they may differ on --resume.
NON_RESULT_FIELDS = {
    "output_dir", "eval", "compare",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "pretrain.train.log_every", "pretrain.train.checkpoint_every", "pretrain.train.keep_checkpoints",
    # Only matters once a step is non-finite; switching stop -> skip is how such a run is rescued.
    "train.on_nonfinite", "pretrain.train.on_nonfinite",
    # How far ahead the data is read, not which data: the order is fixed by the step.
    "train.loader_workers", "train.loader_prefetch", "pretrain.train.loader_workers", "pretrain.train.loader_prefetch",
    # Watching a run (trackers, validation samples) leaves its results bitwise unchanged; EMA does not.
    "train.report_to", "train.validate_every", "train.validation_prompts", "train.validation_samples",
    "train.validation_seed", "pretrain.train.report_to", "pretrain.train.validate_every",
    "pretrain.train.validation_prompts", "pretrain.train.validation_samples", "pretrain.train.validation_seed",
}
# What --overwrite keeps of a run directory (everything else goes): stages that are
# reused when their settings match.
REUSABLE = ("pairs", "reference")
# What a run writes before its first training step. A directory holding only these
# (and REUSABLE) is a run that failed before training: the next plain run takes it over.
BEFORE_FIRST_STEP = (RESOLVED, "run.json", "text_cache")
# What `prefopt bench` and `prefopt bench --data` write into output_dir by default (prefopt/bench.py,
# prefopt/data/bench.py): rows the user keeps, not part of any run. Like the lock files they do not
# make a directory non-empty, and --overwrite keeps them.
BENCH_ROWS, BENCH_DATA_ROWS = BENCH_FILES = ("bench.md", "bench-data.md")
# What the trackers keep in a run directory (prefopt/engine/tracking.py): written by their own libraries.
TRACKER_ENTRIES = ("tensorboard", "wandb", "mlflow.db", "mlruns")
# What to do about a run's final/ that is unsealed or damaged (eval, export, push say it alike).
FINAL_REPAIR = "write it again with `prefopt run RECIPE --resume` in its run"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict (a resolved recipe) as dotted keys; anything but a dict, lists included, is a value."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def first_difference(old: dict, new: dict) -> str | None:
    """The first dotted field that differs and changes results, or None."""
    a, b = flatten(old), flatten(new)
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in NON_RESULT_FIELDS):
            continue
        if a.get(key) != b.get(key):
            return f"{key} ({a.get(key)!r} -> {b.get(key)!r})"
    return None


def read_resolved(run_dir: Path) -> dict[str, Any]:
    """The ``recipe.resolved.yaml`` of a run, or one line naming it when it is missing, unreadable or damaged.

    Read with the recipe loader's guards (no alias bombs, no duplicate keys): the file sits in a
    directory anyone may have written to.
    """
    from prefopt.recipe import parse_yaml

    path = Path(run_dir) / RESOLVED
    if not path.is_file():
        raise PrefoptError(f"{run_dir} holds no run (no {RESOLVED})")
    with file_errors(path, "read"):
        raw = path.read_bytes()
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - YAML's constructors raise anything; the guards raise YAMLRefused
        raise PrefoptError(f"{path} is damaged ({type(exc).__name__}); start the run again with --overwrite") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), dict) for s in ("backbone", "train")):
        raise PrefoptError(f"{path} is damaged (not a resolved recipe); start the run again with --overwrite")
    return data


WRITE_PROBE = ".write-test-"


def contents(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` (its lock files and benchmark rows aside), sorted; none for a directory not made yet."""
    with file_errors(run_dir, "list"):
        if not run_dir.is_dir():
            return []
        # Every rank of a launch writes and removes its own write probe while the others
        # look: a probe is never a leftover.
        return sorted(p.name for p in run_dir.iterdir()
                      if not is_lock_file(p.name) and p.name not in BENCH_FILES and not p.name.startswith(WRITE_PROBE))


# ------------------------------------------------------------------- symbolic links
# prefopt never makes a symbolic link in a run directory. One found there was planted, and
# following it would write or delete outside output_dir (another run's reference, any file):
# a stage directory or file is used only when it is the run's own, link-free all the way down.


def find_link(path: Path) -> Path | None:
    """``path`` itself, or the first entry under it, that is a symbolic link (none is followed); None if none is.

    A tracker's store (wandb/, tensorboard/, ... of a run or of its pretraining stage) is not looked
    into: its library links its own files there (wandb's latest-run, its logs in its cache), and
    prefopt never writes into it. The store itself being a link is still found.
    """
    path = Path(path)
    if path.is_symlink():
        return path
    if not path.is_dir() or path.name in TRACKER_ENTRIES:
        return None
    pending = [path]
    with file_errors(path, "list"):
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        return Path(entry.path)
                    if entry.is_dir(follow_symlinks=False) and entry.name not in TRACKER_ENTRIES:
                        pending.append(Path(entry.path))
    return None


def link_refusal(link: Path) -> PrefoptError:
    """The one line that refuses a symbolic link found in a run directory."""
    try:
        to = f" (to {os.readlink(link)})"
    except OSError:
        to = ""
    return PrefoptError(f"{link} is a symbolic link{to}; prefopt never writes or deletes through a link in a run "
                        f"directory: replace it with a copy of what it points to, or remove it (rm {link})")


def refuse_links(path: Path) -> None:
    """Refuse in one line a run-directory entry that is, or holds, a symbolic link."""
    link = find_link(path)
    if link is not None:
        raise link_refusal(link)


def refuse_links_between(run_dir: Path, path: Path) -> None:
    """Refuse ``path``, and each directory between it and ``run_dir`` that it lies in, being a link.

    For outputs a command puts in a run directory (eval/, export/): a planted link there would carry
    them, and an --overwrite's deletions, out of it.
    """
    run_dir, path = Path(os.path.abspath(run_dir)), Path(os.path.abspath(path))
    if not path.is_relative_to(run_dir):
        return
    while path != run_dir:
        if path.is_symlink():
            raise link_refusal(path)
        path = path.parent


def remove(path: Path) -> None:
    """Delete ``path``: a directory tree, a file, or a link (the link only, never what it points to).

    Nothing to do if it is missing; a removal that fails is one line naming what could not go
    (never ignored: a stage written into a half-removed directory would mix old and new).
    """
    path = Path(path)
    with file_errors(path, "remove"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # never follows a link inside the tree; it deletes the link
        else:
            path.unlink(missing_ok=True)


def prepare_run_dir(run_dir: Path, resolved, resume: bool, overwrite: bool, state=None) -> None:
    """Check what the run may do with ``run_dir``; for a fresh run, clear it and record the recipe and run id.

    ``state``: accelerate's PartialState when the command runs as several processes.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise PrefoptError("--resume continues the run in output_dir and --overwrite replaces it: pass one of them")
    resolved_path = run_dir / RESOLVED
    if resume:
        if not resolved_path.is_file():
            raise PrefoptError(f"--resume: {run_dir} holds no run to resume (no {RESOLVED})")
        difference = first_difference(read_resolved(run_dir), resolved.to_dict())
        if difference:
            raise PrefoptError(f"--resume: the recipe differs from the run's in {difference}; "
                               "resume with the same recipe or start a new output_dir")
        for name in contents(run_dir):  # a resumed run keeps, reads and appends to everything there
            refuse_links(run_dir / name)
        if state is not None:  # every process has looked before the main one removes leftovers
            state.wait_for_everyone()
        return
    names = contents(run_dir)
    leftover = [n for n in names if n not in REUSABLE]
    never_trained = RESOLVED in names and all(n in BEFORE_FIRST_STEP for n in leftover)
    if RESOLVED in names and not (overwrite or never_trained):
        raise PrefoptError(f"{run_dir} already holds a run; pass --overwrite to replace it or --resume to continue it")
    if leftover and not (overwrite or never_trained):  # never delete what a user put there without being asked
        more = f" and {len(leftover) - 1} other entr{'y' if len(leftover) == 2 else 'ies'}" if len(leftover) > 1 else ""
        raise PrefoptError(f"output_dir {run_dir} is not empty (it holds {leftover[0]!r}{more}); "
                           "pass --overwrite to clear it or choose another output_dir")
    # A reusable stage (pairs/, reference/) is reused, resumed or retrained in place: one that is,
    # or holds, a link is not the run's own. --overwrite removes it with the rest (a link goes,
    # never what it points to); a run not asked to clear anything refuses it.
    linked = [n for n in names if n in REUSABLE and find_link(run_dir / n) is not None]
    if linked and not overwrite:
        raise link_refusal(find_link(run_dir / linked[0]))
    removed = leftover + linked
    if removed:
        refuse_to_clear(run_dir, removed, resolved, overwrite=overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f"{WRITE_PROBE}{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PrefoptError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    # Under `accelerate launch` every process has looked before the main one changes anything.
    if state is not None:
        state.wait_for_everyone()
    if state is None or state.is_main_process:
        for name in removed:
            remove(run_dir / name)
        write_run_record(run_dir, new_run_id())
        with file_errors(resolved_path, "write"):
            write_atomic(resolved_path, resolved.to_yaml().encode())
    if state is not None:
        state.wait_for_everyone()


def refuse_to_clear(run_dir: Path, removed: list[str] = (), resolved=None, overwrite: bool = True) -> None:
    """Refuse to delete ``removed`` (names in ``run_dir``) when that would lose what is not the run's to lose.

    --overwrite clears a run directory, never the file system's root, a home or the working
    directory. And no run deletes the recipe it runs or a file the recipe has it read
    (``resolved``: the resolved recipe), as it would when they lie in output_dir.
    """
    target = run_dir.resolve()
    precious = {Path("/"), Path.home().resolve(), Path.cwd().resolve()}
    if overwrite and (target in precious or Path.cwd().resolve().is_relative_to(target)):
        raise PrefoptError(f"--overwrite would clear {run_dir} ({target}), which holds the working directory, "
                           "a home directory or the root; give the run a directory of its own as output_dir")
    if resolved is None:
        return
    # A link is removed as a link: what it points to stays, so an input reached through one is safe.
    doomed = [(run_dir / name).resolve() for name in removed if not (run_dir / name).is_symlink()]
    for path, what in recipe_inputs(resolved):
        real = path.resolve()
        if any(real == d or real.is_relative_to(d) for d in doomed):
            clearing = "--overwrite" if overwrite else "starting the run"
            raise PrefoptError(f"{clearing} would delete {path} ({what}), which lies in output_dir {run_dir}; "
                               "keep the recipe and the files it names outside output_dir, or choose another "
                               "output_dir")


def recipe_inputs(resolved) -> Iterator[tuple[Path, str]]:
    """What a run reads that exists and its recipe names, as (path, what): the recipe file itself,
    every field marked as a file the recipe reads (:mod:`prefopt.paths`), and a user's pairs.dir."""
    from prefopt.paths import _kind  # the marks prefopt.paths resolves: the files a recipe reads

    def marked(model, prefix: str) -> Iterator[tuple[str, str]]:
        for name in type(model).model_fields:
            value, dotted = getattr(model, name), f"{prefix}{name}"
            if _kind(type(model), name) is not None:  # a str, a list of them, or a dict of them
                values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
                yield from ((dotted, v) for v in values if isinstance(v, str))
            elif isinstance(value, BaseModel):
                yield from marked(value, f"{dotted}.")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, BaseModel):
                        yield from marked(item, f"{dotted}.{i}.")

    source = Path(str(getattr(resolved, "source", "")))
    if source.is_file():  # a compare variant's source names its variant too: it is no file
        yield source, "the recipe being run"
    fields = list(marked(resolved.recipe, ""))
    for key, config in resolved.configs.items():
        fields += marked(config, ".".join(map(str, key)) + ".")
    recipe = resolved.recipe
    for section in (recipe.pairs, getattr(recipe.pretrain, "pairs", None)):
        if section is not None and section.dir:
            fields.append(("pairs.dir" if section is recipe.pairs else "pretrain.pairs.dir", section.dir))
    for dotted, value in fields:
        path = Path(value)
        # A relative value left so by prefopt.paths is a Hub id, not a file (output dirs: from here).
        if (path.is_absolute() or dotted.endswith("pairs.dir")) and path.exists():
            yield path, f"{dotted}, which this run reads"


def ensure_run_id(run_dir: Path) -> str:
    """The run's id; a run directory that has none (a stage started outside prepare_run_dir) gets one now."""
    run_id = run_id_of(run_dir)
    if run_id is None:
        run_id = new_run_id()
        write_run_record(run_dir, run_id)
    return run_id


def save_final(backbone, run_dir: Path, accelerator) -> Path:
    """Write final/ whole or not at all, sealed with the run's id."""
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    if accelerator.is_main_process:
        remove(tmp)  # a leftover of a killed save (or a planted link: removed, never written through)
        try:
            backbone.save(str(tmp))
            seal(tmp, ensure_run_id(run_dir))
            replace_dir(tmp, final)
        except BaseException as exc:
            # Tidying after a failure: the failure is what is reported; a tmp that will not go is
            # removed (or named) by the next save.
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, PrefoptError) or not isinstance(exc, Exception):
                raise
            # An OSError, or torch and safetensors reporting a full disk as RuntimeError: one line.
            raise PrefoptError(f"could not write {final}: {write_failure(exc, run_dir)}") from exc
    accelerator.wait_for_everyone()
    return final


def reseal_final(run_dir: Path) -> None:
    """Seal final/ again after files were added to it at the end of the run (the model card)."""
    run_id = run_id_of(run_dir)
    if run_id is not None:
        seal(Path(run_dir) / "final", run_id)


def verify_final(final: Path, repair: str) -> None:
    """Refuse a ``final/`` (of a run or of its reference stage) that is damaged or from another run."""
    final = Path(final)
    verify(final, "trained weights", repair, run_id=run_id_of(final.parent))
