"""accelerate for each stage of a command: the Accelerator, the process group, precision and seeds.

Every stage (pretraining, pair building, training, evaluation, benchmarks)
starts the same way: a fresh Accelerator for its settings, the global seeds,
and the backbone loaded on the stage's device in the precision the Accelerator
chose (:func:`load_backbone`). GPU-only options are refused on a CPU machine
in one line, before anything runs.
"""

from __future__ import annotations

from prefopt.errors import PrefoptError, require
from prefopt.recipe import TrainConfig


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


def load_backbone(backbone, train: TrainConfig, *, seed: int | None = None, training: bool = True,
                  policies: dict[str, str] | None = None):
    """Make the stage's Accelerator and load ``backbone`` on its device, in its precision; returns the Accelerator.

    ``seed``: seed the global RNGs before loading, so a randomly initialised
    backbone is the same in every run and process. ``training=False`` loads for
    sampling only. ``policies``: the extra frozen policies an objective asks for.
    """
    from prefopt.checksums import verify_pretrained

    verify_pretrained(getattr(backbone.config, "pretrained", None))
    accelerator = make_accelerator(train)
    if seed is not None:
        seed_everything(seed)
    backbone.load(runtime_for(accelerator, train=training), policies or {})
    return accelerator
