"""What ``prefopt run`` does: (pretrain the reference,) build pairs, train, evaluate.

A run directory holds ``recipe.resolved.yaml``, ``metrics.jsonl``,
``checkpoints/``, ``final/``, ``eval.json`` and, by default, ``pairs/`` and the
pretrained ``reference/``. Finished stages are reused: a complete pair dataset
with the same settings, a reference pretrained with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import yaml

from prefopt.atomic import write_atomic
from prefopt.checksums import read_json
from prefopt.errors import DataError, PrefoptError, describe_os_error, file_errors, require
from prefopt.recipe import PairsConfig, ResolvedRecipe, TrainConfig
from prefopt.registry import PluginRegistry
from prefopt.rundir import RESOLVED, prepare_run_dir, reseal_final, save_final, verify_final  # noqa: F401 - RESOLVED: model_card

log = logging.getLogger(__name__)

PRETRAIN_RECORD = "pretrain.json"  # the settings a pretrained reference/ was made with


# -- accelerate ------------------------------------------------------------------------
def make_accelerator(train: TrainConfig):
    import torch
    from accelerate import Accelerator

    _require_gpu_options(train, "train")
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        require("deepspeed", "deepspeed")
    _fresh_accelerator_state()
    set_tf32(train.allow_tf32)
    # cpu=True without a GPU: processes started by torchrun / `accelerate launch --multi_gpu`
    # then form one gloo group instead of each running alone as "process 0 of 1".
    # step_scheduler_with_optimizer=False: the trainer steps the LR schedule once per optimizer
    # step itself; accelerate's default would step it once per process (see Trainer.setup).
    # gradient_accumulation_steps: accelerator.accumulate() syncs and (DeepSpeed) steps on the last micro-step.
    accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=not torch.cuda.is_available(),
                              step_scheduler_with_optimizer=False, gradient_accumulation_steps=train.grad_accum)
    _check_sharding(accelerator)
    return accelerator


def _fresh_accelerator_state() -> None:
    """Clear accelerate's global AcceleratorState so this stage may choose its own precision.

    Stages of one process (pretrain, pair building, training) may ask for different
    precisions, and accelerate keeps one global state that refuses to change. Only
    the private ``_reset_state`` clears it (accelerate's own tests use it), so it is
    looked up, not assumed: were a release to drop it, a first stage still runs and
    a later one fails here in one line instead of in a traceback inside accelerate.
    """
    import accelerate
    from accelerate.state import AcceleratorState, is_initialized

    reset = getattr(AcceleratorState, "_reset_state", None)
    if reset is not None:
        reset(reset_partial_state=False)
    elif is_initialized():  # only a later stage of the same process needs the reset
        raise PrefoptError(f"accelerate {accelerate.__version__} has no AcceleratorState._reset_state, which a "
                           "multi-stage run needs to start each stage fresh; install accelerate>=1.0,<2")


def _check_sharding(accelerator) -> None:
    """A launch that asks for FSDP must get it: accelerate runs FSDP on GPUs only and would
    otherwise train unsharded, as plain data parallel, without a word."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP") and accelerator.distributed_type != DistributedType.FSDP:
        raise PrefoptError("the launch asks for FSDP, which accelerate runs on GPUs only (here it would train "
                           "without sharding); launch without the FSDP config on this machine")


def set_tf32(allow: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (tensor cores of Ampere and newer GPUs).

    About 10 mantissa bits in the products, accumulated in float32: the
    speed-up diffusers' training scripts take with ``--allow_tf32``. Older
    GPUs and other devices ignore the setting; on a CPU machine nothing is set.
    """
    import torch

    if not torch.cuda.is_available():
        return
    precision = "tf32" if allow else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def process_state():
    """accelerate's view of the launched processes, before any stage makes its Accelerator."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _require_gpu_options(cfg: TrainConfig, where: str) -> None:
    """fp16 autocast and 8-bit Adam are CUDA features: refuse them on a CPU machine."""
    import torch

    if torch.cuda.is_available():
        return
    if cfg.mixed_precision == "fp16":
        raise PrefoptError(f"{where}.mixed_precision=fp16 needs a GPU; use bf16 or no on a CPU machine")
    if cfg.optimizer == "adamw8bit":
        raise PrefoptError(f"{where}.optimizer=adamw8bit needs a GPU; use adamw or adafactor on a CPU machine")


def check_gpu_options(recipe) -> None:
    """Say what needs a GPU before any stage (pretraining included) has run."""
    _require_gpu_options(recipe.train, "train")
    if recipe.pretrain:
        _require_gpu_options(recipe.pretrain.train, "pretrain.train")


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (python, numpy, torch) so random initialisations repeat across runs."""
    from accelerate.utils import set_seed

    set_seed(seed)


def runtime_for(accelerator, train: bool = True):
    """Frozen weights follow the mixed precision; ``train=False`` loads for sampling only."""
    import torch

    from prefopt.interfaces import Runtime

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    return Runtime(device=accelerator.device, dtype=dtype, train=train)


# -- stages ------------------------------------------------------------------------------------
def build_pairs(pairs_cfg: PairsConfig, source_config, registry: PluginRegistry, backbone, directory: Path,
                seed: int, accelerator, base_dir: Path, replace_stale: bool = False, full_check: bool = False) -> Path:
    """Build or reuse the pair dataset; a user's ``pairs.dir`` is held against other commands meanwhile.

    (A run's own pairs/ is covered by the run directory's lock; it may be deleted and
    rebuilt, so it holds no lock file of its own.)
    """
    from contextlib import nullcontext

    from prefopt.locking import hold

    guard = nullcontext() if replace_stale else hold(directory, "pair dataset", process_state())
    with guard:
        return _build_pairs(pairs_cfg, source_config, registry, backbone, directory, seed, accelerator, base_dir,
                            replace_stale, full_check)


def _build_pairs(pairs_cfg: PairsConfig, source_config, registry: PluginRegistry, backbone, directory: Path,
                 seed: int, accelerator, base_dir: Path, replace_stale: bool, full_check: bool) -> Path:
    """Build the pair dataset, or reuse a complete one made with the same settings.

    A complete dataset with other settings is an error, unless ``replace_stale``
    (prefopt chose the directory, the user did not), when it is rebuilt. Damaged
    shards of a reused dataset are built again (``full_check``: every row's bytes
    are checked, as ``pairs build`` does; otherwise sidecars and headers).
    """
    from prefopt.data.build import build_pair_dataset, is_complete, verify_pair_dataset
    from prefopt.data.pairset import check_identity, dataset_header, read_manifest, resolve_latent_dtype

    settings = {"source": {"name": pairs_cfg.source.name, **source_config.model_dump(mode="json")},
                "prompts": pairs_cfg.prompts.model_dump(mode="json") if pairs_cfg.prompts else None,
                "seed": seed}
    reference = pretrained_reference_fingerprint(getattr(backbone.config, "pretrained", None))
    if reference is not None:  # pairs sampled from a reference this run trained: tie them to it
        settings["reference"] = reference
    header = dataset_header(backbone.identity(), settings, pairs_cfg.shard_size,
                            resolve_latent_dtype(pairs_cfg.latent_dtype, backbone.identity()))
    if is_complete(directory):
        # A finished dataset is reused only for the backbone and settings it was built with.
        manifest = read_manifest(directory)
        check_identity(manifest, backbone.identity(), directory)
        if manifest["dataset_id"] == header["dataset_id"]:
            if verify_pair_dataset(directory, header, full_check, accelerator.process_index,
                                   accelerator.num_processes, accelerator.wait_for_everyone):
                return directory
        elif not replace_stale:
            raise DataError(f"pair dataset {directory} was built with different pairs settings; "
                            "delete it or point pairs.dir elsewhere")
        else:
            log.warning("rebuilding %s: it was built with other pairs settings", directory)
            if accelerator.is_main_process:
                shutil.rmtree(directory)
            accelerator.wait_for_everyone()
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


def _stage(*, run_dir: Path, backbone_cls, backbone_config, objective, pairs_cfg: PairsConfig, source_config,
           train_cfg: TrainConfig, registry, seed: int, resume: str | None, base_dir: Path,
           pairs_dir: Path | None = None, command: str = "prefopt run RECIPE"):
    """Load the backbone, build pairs if needed, train, save final/. Returns the loaded backbone.

    ``command``: how the user started this, for the repair a refused checkpoint names.
    """
    from prefopt.data.pairset import PairDataset
    from prefopt.engine.checkpoint import find_checkpoint
    from prefopt.engine.trainer import train

    accelerator = make_accelerator(train_cfg)
    seed_everything(seed)  # a randomly initialised backbone must be the same in every run and process
    backbone = backbone_cls(backbone_config)
    policies = objective.policies()
    check_policies(policies)
    backbone.load(runtime_for(accelerator), policies)
    # Pairs in a place prefopt chose (not a user's pairs.dir) are rebuilt when stale.
    owned = pairs_cfg.dir is None
    pairs_dir = Path(pairs_cfg.dir or pairs_dir or run_dir / "pairs")
    build_pairs(pairs_cfg, source_config, registry, backbone, pairs_dir, seed, accelerator, base_dir,
                replace_stale=owned)
    dataset = PairDataset(pairs_dir, identity=backbone.identity())
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
    record = {"backbone": resolved.to_dict()["backbone"], "pretrain": resolved.to_dict()["pretrain"],
              "seed": recipe.seed}
    record_path = stage_dir / PRETRAIN_RECORD
    same_settings = record_path.is_file() and read_json(record_path, "pretraining record") == record
    if (stage_dir / "final").is_dir() and same_settings:
        verify_final(stage_dir / "final", repair=f"remove {stage_dir} (rm -r {stage_dir}) and run the command "
                                               "again: the reference is then trained anew")
        log.info("reusing the pretrained reference in %s", stage_dir)
        return stage_dir / "final"
    can_resume = resume and same_settings
    # Under `accelerate launch` every process has looked before the main one changes anything.
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        if not can_resume:
            shutil.rmtree(stage_dir, ignore_errors=True)
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(record_path, json.dumps(record, indent=1).encode())
        except OSError as exc:
            raise PrefoptError(f"output_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    state.wait_for_everyone()
    objective = registry.get("objective", recipe.pretrain.objective.name)(resolved.config("pretrain", "objective"))
    _stage(run_dir=stage_dir, backbone_cls=registry.get("backbone", recipe.backbone.name),
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
    from prefopt.locking import hold

    check_gpu_options(resolved.recipe)
    from prefopt.requirements import check_requirements

    check_requirements(resolved, registry, evaluators=True)  # before the run directory exists: a refused recipe leaves nothing
    from prefopt.engine.tracking import check_installed

    check_installed(resolved.recipe.train.report_to)  # a missing tracker package fails now, not after pair building
    with hold(resolved.recipe.output_dir, "run directory", process_state()):
        return _run_held(resolved, registry, resume, overwrite, pairs_dir, reference)


def _run_held(resolved: ResolvedRecipe, registry: PluginRegistry, resume: str | None, overwrite: bool,
              pairs_dir: Path | None, reference: Path | None) -> dict:
    recipe = resolved.recipe
    run_dir = Path(recipe.output_dir)
    prepare_run_dir(run_dir, resolved, resume=resume is not None, overwrite=overwrite, state=process_state())
    if reference is None and recipe.pretrain is not None:
        reference = pretrain_reference(resolved, registry, run_dir, resume=resume is not None)
    objective = registry.get("objective", recipe.objective.name)(resolved.config("objective"))
    if resume == "latest" and not _has_checkpoint(run_dir):
        resume = None  # killed before the first checkpoint: start the training stage over
    backbone = _stage(run_dir=run_dir, backbone_cls=registry.get("backbone", recipe.backbone.name),
                      backbone_config=backbone_config_for(resolved, reference), objective=objective,
                      pairs_cfg=recipe.pairs, source_config=resolved.config("pairs", "source"),
                      train_cfg=recipe.train, registry=registry, seed=recipe.seed, resume=resume,
                      base_dir=Path(resolved.source).parent, pairs_dir=pairs_dir,
                      command=f"prefopt run {resolved.source}")
    results = evaluate_with(resolved, registry, backbone, run_dir)
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


def evaluate_with(resolved: ResolvedRecipe, registry, backbone, run_dir: Path) -> dict:
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
            write_atomic(run_dir / "eval.json", (json.dumps(results, indent=1) + "\n").encode())
        for key, value in results.items():
            print(f"  {key}: {value:.4f}")
    state.wait_for_everyone()
    return results


def build_pairs_for(resolved: ResolvedRecipe, registry) -> Path:
    """``prefopt pairs build``: the recipe's pair dataset with its reference backbone, holding the run directory."""
    from prefopt.locking import hold

    with hold(resolved.recipe.output_dir, "run directory", process_state()):
        return _build_pairs_held(resolved, registry)


def _build_pairs_held(resolved: ResolvedRecipe, registry) -> Path:
    recipe = resolved.recipe
    run_dir = Path(recipe.output_dir)
    check_gpu_options(recipe)
    reference = pretrain_reference(resolved, registry, run_dir, resume=True) if recipe.pretrain else None
    accelerator = make_accelerator(recipe.train)
    seed_everything(recipe.seed)
    backbone = registry.get("backbone", recipe.backbone.name)(backbone_config_for(resolved, reference))
    backbone.load(runtime_for(accelerator, train=False), {})
    directory = Path(recipe.pairs.dir or run_dir / "pairs")
    build_pairs(recipe.pairs, resolved.config("pairs", "source"), registry, backbone, directory, recipe.seed,
                accelerator, Path(resolved.source).parent, replace_stale=recipe.pairs.dir is None, full_check=True)
    if accelerator.is_main_process:
        print(f"pair dataset ready: {directory}")
    return directory


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


def backbone_that_made(directory: Path, registry):
    """The backbone a pair dataset was built with, from its backbone.json."""
    from prefopt.data.pairset import MADE_WITH

    path = Path(directory) / MADE_WITH
    if not path.is_file():
        raise DataError(f"{directory} has no {MADE_WITH}; pass --recipe to say which backbone decodes it")
    made_with = read_json(path, "pair dataset record")
    if not isinstance(made_with, dict) or not {"backbone", "config"} <= set(made_with):
        raise DataError(f"{path} is damaged (no backbone and config); pass --recipe to say which backbone decodes it")
    cls = registry.get("backbone", made_with["backbone"], where=str(path))
    return cls(cls.Config.model_validate(made_with["config"]))


def show_pairs(backbone, directory: Path, count: int = 8, output: Path | None = None) -> Path:
    """``prefopt pairs show``: a PNG grid of decoded pairs with their prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prefopt.data.pairset import PairDataset

    accelerator = make_accelerator(TrainConfig())
    backbone.load(runtime_for(accelerator, train=False), {})
    dataset = PairDataset(directory, identity=backbone.identity())
    n = min(count, len(dataset))
    x0_w, x0_l, prompts, negatives = dataset.batch(range(n))
    images = backbone.decode(x0_w.to(accelerator.device)), backbone.decode(x0_l.to(accelerator.device))
    fig, axes = plt.subplots(n, 2, figsize=(6, 3.2 * n), squeeze=False)
    for i in range(n):
        for j, (side, text) in enumerate(((images[0][i], prompts[i]), (images[1][i], negatives[i]))):
            axes[i][j].imshow(side)
            axes[i][j].set_title(("c: " if j == 0 else "c-: ") + text[:60], fontsize=7)
            axes[i][j].axis("off")
    fig.tight_layout()
    output = Path(output or Path(directory) / "pairs.png")
    import io

    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    with file_errors(output, "write"):
        write_atomic(output, image.getvalue())
    plt.close(fig)
    return output
