"""The stages of ``prefopt run`` and ``prefopt pairs build``: pretrain the reference, build pairs, train.

Finished stages are reused: a complete pair dataset built with the same
settings, a reference pretrained with the same settings (``reference/`` with
its ``pretrain.json``). The run directory's policy (what a fresh run,
``--overwrite`` and ``--resume`` may do with it) is :mod:`prefopt.rundir`'s;
evaluation after training is :mod:`prefopt.run_evaluation`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from prefopt.accelerate_setup import check_gpu_options, load_backbone, process_state
from prefopt.atomic import write_atomic
from prefopt.checksums import read_json
from prefopt.errors import DataError, PrefoptError, file_errors
from prefopt.recipe import PairsConfig, ResolvedRecipe, TrainConfig
from prefopt.registry import PluginRegistry
from prefopt.rundir import (contents, find_link, prepare_run_dir, refuse_links, remove, reseal_final, save_final,
                            verify_final)

log = logging.getLogger(__name__)

PRETRAIN_RECORD = "pretrain.json"  # the settings a pretrained reference/ was made with


def build_or_reuse_pairs(pairs_cfg: PairsConfig, source_config, registry: PluginRegistry, backbone,
                         directory: Path, seed: int, accelerator, base_dir: Path, replace_stale: bool = False,
                         full_check: bool = False) -> Path:
    """Build or reuse the pair dataset; a user's ``pairs.dir`` is held against other commands meanwhile.

    (A run's own pairs/ is covered by the run directory's lock; it may be deleted and
    rebuilt, so it holds no lock file of its own.)
    """
    from contextlib import nullcontext

    from prefopt.locking import hold

    if not replace_stale:  # before the lock, whose files would be left in a refused directory
        _check_users_pairs_dir(directory)
    guard = nullcontext() if replace_stale else hold(directory, "pair dataset", process_state())
    with guard:
        return _build_or_reuse_pairs(pairs_cfg, source_config, registry, backbone, directory, seed, accelerator,
                                     base_dir, replace_stale, full_check)


def _check_users_pairs_dir(directory: Path) -> None:
    """A ``pairs.dir`` the user named is written into only if it is a pair dataset already, or empty.

    Otherwise the build would overwrite files of the user's that share a dataset file's name, and
    a link planted inside (``shards`` -> elsewhere) would carry the shards out of it. The directory
    itself may be a link (to a larger disk, say): what it points to is checked.
    """
    from prefopt.data.pairset import MANIFEST

    real = directory.resolve()
    if not real.is_dir():
        return  # made by the build
    link = find_link(real)
    if link is not None:
        raise DataError(f"pairs.dir {directory} holds a symbolic link ({link}); prefopt never writes pairs "
                        "through one: point pairs.dir at a directory without links")
    if (real / MANIFEST).exists():
        return  # a pair dataset, whole or being built: _build_or_reuse_pairs checks it is this recipe's
    # A build killed before its manifest leaves at most an empty shards/.
    foreign = [name for name in contents(real) if not (name == "shards" and not any((real / name).iterdir()))]
    if foreign:
        raise DataError(f"pairs.dir {directory} holds files that are not a pair dataset (e.g. {foreign[0]!r}); "
                        "point pairs.dir at an empty or new directory")


def _build_or_reuse_pairs(pairs_cfg: PairsConfig, source_config, registry: PluginRegistry, backbone,
                          directory: Path, seed: int, accelerator, base_dir: Path, replace_stale: bool,
                          full_check: bool) -> Path:
    """Build the pair dataset, or reuse a complete one made with the same settings.

    A complete dataset with other settings, or in another prefopt version's format, is an
    error, unless ``replace_stale`` (prefopt chose the directory, the user did not), when it
    is rebuilt. Damaged shards of a reused dataset are built again (``full_check``: every
    row's bytes are checked, as ``pairs build`` does; otherwise sidecars and headers).
    """
    from prefopt.data.build import build_pair_dataset, is_complete, verify_pair_dataset
    from prefopt.data.pairset import (FormatError, check_identity, dataset_header, read_manifest,
                                      resolve_latent_dtype)

    def discard(why: str) -> None:
        log.warning("rebuilding %s: %s", directory, why)
        if accelerator.is_main_process:
            shutil.rmtree(directory)
        accelerator.wait_for_everyone()

    settings = {"source": {"name": pairs_cfg.source.name, **source_config.model_dump(mode="json")},
                "prompts": pairs_cfg.prompts.model_dump(mode="json") if pairs_cfg.prompts else None,
                "seed": seed}
    reference = pretrained_reference_fingerprint(getattr(backbone.config, "pretrained", None))
    if reference is not None:  # pairs sampled from a reference this run trained: tie them to it
        settings["reference"] = reference
    header = dataset_header(backbone.data_signature(), settings, pairs_cfg.shard_size,
                            resolve_latent_dtype(pairs_cfg.latent_dtype, backbone.data_signature()))
    try:
        complete = is_complete(directory)
    except FormatError:
        if not replace_stale:
            raise
        discard("it was built by another prefopt version")
        complete = False
    if complete:
        # A finished dataset is reused only for the backbone and settings it was built with.
        manifest = read_manifest(directory)
        check_identity(manifest, backbone.data_signature(), directory)
        if manifest["dataset_id"] == header["dataset_id"]:
            if verify_pair_dataset(directory, header, full_check, accelerator.process_index,
                                   accelerator.num_processes, accelerator.wait_for_everyone):
                return directory
        elif not replace_stale:
            raise DataError(f"pair dataset {directory} was built with different pairs settings; "
                            "delete it or point pairs.dir elsewhere")
        else:
            discard("it was built with other pairs settings")
    source = registry.get("pair_source", pairs_cfg.source.name)(source_config)
    prompts = None
    if pairs_cfg.prompts:
        from prefopt.data.prompts import load_prompts

        prompts = load_prompts(pairs_cfg.prompts, base_dir=base_dir)
    rows = source.pairs(prompts, seed)  # a list or a stream: the builder reads it one shard at a time
    return build_pair_dataset(
        directory, rows, backbone, header, pairs_cfg.sample_batch_size,
        process_index=accelerator.process_index, num_processes=accelerator.num_processes,
        wait_for_everyone=accelerator.wait_for_everyone,
    )


def pretrained_reference_fingerprint(pretrained: str | None) -> str | None:
    """For a reference that ``pretrain`` made: the hash of the settings it was trained with."""
    if not pretrained:
        return None
    record = Path(pretrained).parent / PRETRAIN_RECORD
    if not record.is_file():
        return None
    with file_errors(record, "read"):
        return hashlib.sha256(record.read_bytes()).hexdigest()


def train_stage(*, run_dir: Path, backbone_cls, backbone_config, objective, pairs_cfg: PairsConfig, source_config,
                train_cfg: TrainConfig, registry, seed: int, resume: str | None, base_dir: Path,
                pairs_dir: Path | None = None, command: str = "prefopt run RECIPE"):
    """Load the backbone, build pairs if needed, train, save final/. Returns the loaded backbone.

    ``command``: how the user started this, for the repair a refused checkpoint names.
    """
    from prefopt.data.pairset import PairDataset
    from prefopt.engine.checkpoint import find_checkpoint
    from prefopt.engine.trainer import train

    backbone = backbone_cls(backbone_config)
    policies = objective.policies()
    check_policies(policies)
    # Seeded: a randomly initialised backbone must be the same in every run and process.
    accelerator = load_backbone(backbone, train_cfg, seed=seed, policies=policies)
    # Pairs in a place prefopt chose (not a user's pairs.dir) are rebuilt when stale.
    owned = pairs_cfg.dir is None
    pairs_dir = Path(pairs_cfg.dir or pairs_dir or run_dir / "pairs")
    if owned:  # the run's own pairs/ (or a comparison's shared one): never built through a planted link
        refuse_links(pairs_dir)
    build_or_reuse_pairs(pairs_cfg, source_config, registry, backbone, pairs_dir, seed, accelerator, base_dir,
                         replace_stale=owned)
    dataset = PairDataset(pairs_dir, identity=backbone.data_signature())
    checkpoint = find_checkpoint(run_dir, resume, command=command) if resume else None
    result = train(backbone=backbone, objective=objective, dataset=dataset, cfg=train_cfg, run_dir=run_dir,
                   seed=seed, accelerator=accelerator, resume_from=checkpoint)
    save_final(backbone, run_dir, accelerator)
    if result.skipped_steps:
        log.warning("%d steps were skipped for non-finite values", result.skipped_steps)
    return backbone


def check_policies(policies: dict[str, str]) -> None:
    """DD-CPP policies are local weights: a missing one is named here, not looked up on the hub."""
    for name, path in policies.items():
        if not Path(path).exists():
            raise PrefoptError(f"objective: the {name} weights {path} do not exist (a DD-CPP policy is a "
                               "local directory, e.g. another run's final/)")
        if (Path(path) / "integrity.json").is_file():  # a prefopt final/: use it only if whole
            verify_final(Path(path), repair=f"train that policy again; its {Path(path).parent} holds the run")


def pretrain_reference(resolved: ResolvedRecipe, registry, run_dir: Path, resume: bool) -> Path:
    """Train the reference (the toy's noisy-data model) unless an identical one exists."""
    recipe = resolved.recipe
    stage_dir = run_dir / "reference"
    # The stage is read, resumed, or deleted and trained anew in place: never through a link planted
    # there (it would overwrite another run's reference, or anything). `prefopt run` refused one
    # already (prepare_run_dir); `pairs build` and compare's shared reference come here directly.
    refuse_links(stage_dir)
    record = {"backbone": resolved.to_dict()["backbone"], "pretrain": resolved.to_dict()["pretrain"],
              "seed": recipe.seed}
    record_path = stage_dir / PRETRAIN_RECORD
    retrain = f"remove {stage_dir} (rm -r {stage_dir}) and run the command again: the reference is then trained anew"
    same_settings = record_path.is_file() and read_json(record_path, "pretraining record", retrain) == record
    if (stage_dir / "final").is_dir() and same_settings:
        verify_final(stage_dir / "final", repair=retrain)
        log.info("reusing the pretrained reference in %s", stage_dir)
        return stage_dir / "final"
    can_resume = resume and same_settings
    # Under `accelerate launch` every process has looked before the main one changes anything.
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        if not can_resume:
            remove(stage_dir)  # one line if it will not go: training into a half-removed stage would mix the two
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(record_path, json.dumps(record, indent=1).encode())
        except OSError as exc:
            raise PrefoptError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    state.wait_for_everyone()
    objective = registry.get("objective", recipe.pretrain.objective.name)(resolved.config("pretrain", "objective"))
    train_stage(run_dir=stage_dir, backbone_cls=registry.get("backbone", recipe.backbone.name),
                backbone_config=resolved.config("backbone"), objective=objective, pairs_cfg=recipe.pretrain.pairs,
                source_config=resolved.config("pretrain", "pairs", "source"), train_cfg=recipe.pretrain.train,
                registry=registry, seed=recipe.seed,
                resume="latest" if can_resume and _has_checkpoint(stage_dir) else None,
                base_dir=Path(resolved.source).parent, command=f"prefopt run {resolved.source}")
    return stage_dir / "final"


def _has_checkpoint(run_dir: Path) -> bool:
    from prefopt.engine.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir))


def backbone_config_for(resolved: ResolvedRecipe, pretrained: Path | None):
    config = resolved.config("backbone")
    return config.model_copy(update={"pretrained": str(pretrained)}) if pretrained else config


def run_recipe(resolved: ResolvedRecipe, registry: PluginRegistry, resume: str | None = None,
               overwrite: bool = False, pairs_dir: Path | None = None, reference: Path | None = None) -> dict:
    """Run every stage of a recipe, holding its run directory throughout; returns the evaluation results."""
    from prefopt.engine.tracking import check_installed
    from prefopt.locking import hold
    from prefopt.requirements import check_requirements

    check_gpu_options(resolved.recipe)
    check_requirements(resolved, registry, evaluators=True)  # before the run directory exists: a refused recipe leaves nothing
    check_installed(resolved.recipe.train.report_to)  # a missing tracker package fails now, not after pair building
    with hold(resolved.recipe.output_dir, "run directory", process_state()):
        return _run_held(resolved, registry, resume, overwrite, pairs_dir, reference)


def _run_held(resolved: ResolvedRecipe, registry: PluginRegistry, resume: str | None, overwrite: bool,
              pairs_dir: Path | None, reference: Path | None) -> dict:
    from prefopt.run_evaluation import evaluate_run

    recipe = resolved.recipe
    run_dir = Path(recipe.output_dir)
    prepare_run_dir(run_dir, resolved, resume=resume is not None, overwrite=overwrite, state=process_state())
    if reference is None and recipe.pretrain is not None:
        reference = pretrain_reference(resolved, registry, run_dir, resume=resume is not None)
    objective = registry.get("objective", recipe.objective.name)(resolved.config("objective"))
    if resume == "latest" and not _has_checkpoint(run_dir):
        resume = None  # killed before the first checkpoint: start the training stage over
    backbone = train_stage(run_dir=run_dir, backbone_cls=registry.get("backbone", recipe.backbone.name),
                           backbone_config=backbone_config_for(resolved, reference), objective=objective,
                           pairs_cfg=recipe.pairs, source_config=resolved.config("pairs", "source"),
                           train_cfg=recipe.train, registry=registry, seed=recipe.seed, resume=resume,
                           base_dir=Path(resolved.source).parent, pairs_dir=pairs_dir,
                           command=f"prefopt run {resolved.source}")
    results = evaluate_run(resolved, registry, backbone, run_dir)
    if process_state().is_main_process:
        from prefopt.model_card import write_model_card

        # After evaluation, so the card carries eval.json's scores and the evaluators' figures.
        write_model_card(run_dir, getattr(backbone, "pipeline_class", None),
                         pairs_dir=Path(recipe.pairs.dir or pairs_dir or run_dir / "pairs"),
                         num_processes=process_state().num_processes)
        reseal_final(run_dir)  # the card and its figures are part of final/ now
        print(f"run finished: {run_dir / 'final'}")
        for figure in sorted(run_dir.glob("*.png")):
            print(f"  figure: {figure}")
    return results


def build_recipe_pairs(resolved: ResolvedRecipe, registry) -> Path:
    """``prefopt pairs build``: the recipe's pair dataset with its reference backbone, holding the run directory."""
    from prefopt.locking import hold

    with hold(resolved.recipe.output_dir, "run directory", process_state()):
        return _build_recipe_pairs_held(resolved, registry)


def _build_recipe_pairs_held(resolved: ResolvedRecipe, registry) -> Path:
    recipe = resolved.recipe
    run_dir = Path(recipe.output_dir)
    check_gpu_options(recipe)
    reference = pretrain_reference(resolved, registry, run_dir, resume=True) if recipe.pretrain else None
    backbone = registry.get("backbone", recipe.backbone.name)(backbone_config_for(resolved, reference))
    accelerator = load_backbone(backbone, recipe.train, seed=recipe.seed, training=False)
    directory = Path(recipe.pairs.dir or run_dir / "pairs")
    if recipe.pairs.dir is None:  # the run's own pairs/: never built through a planted link
        refuse_links(directory)
    build_or_reuse_pairs(recipe.pairs, resolved.config("pairs", "source"), registry, backbone, directory,
                         recipe.seed, accelerator, Path(resolved.source).parent,
                         replace_stale=recipe.pairs.dir is None, full_check=True)
    if accelerator.is_main_process:
        print(f"pair dataset ready: {directory}")
    return directory
