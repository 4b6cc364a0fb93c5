"""LoRA on diffusers denoisers through peft: the student adapter, frozen policies, saving.

One denoiser can carry several adapters: the student's (trained) and extra
frozen policies (DD-CPP). The reference is the same module with every adapter
switched off, so LoRA training keeps a single copy of the base weights.

peft's adapter switches also flip ``requires_grad`` of adapter weights (it
enables grads on whatever becomes active); the contexts below restore the
flags they found, so a reference or policy prediction never makes a frozen
weight trainable, nor the student's adapter frozen.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import torch

from prefopt.errors import PrefoptError

# diffusers' save / metadata helpers expect the trained adapter under this name.
STUDENT_ADAPTER = "default"


def add_student_adapter(module, finetune) -> None:
    """Freeze the module and add the trainable adapter (float32 weights, B = 0)."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    config = LoraConfig(
        r=finetune.rank,
        lora_alpha=finetune.alpha or finetune.rank,
        init_lora_weights="gaussian" if finetune.init == "gaussian" else True,
        target_modules=list(finetune.target_modules),
    )
    module.requires_grad_(False)
    try:
        module.add_adapter(config, adapter_name=STUDENT_ADAPTER)
    except ValueError as exc:  # peft: none of the target modules exist
        raise PrefoptError(f"backbone.finetune.target_modules: {exc}") from exc
    # Frozen weights may be half precision; the optimizer's weights must not be.
    cast_training_params(module, torch.float32)


def load_policy(host, name: str, path: str, prefix: str) -> None:
    """Load a saved LoRA (a backbone's save() output) as the frozen adapter ``name``."""
    active = host.active_adapters() if getattr(host, "_hf_peft_config_loaded", False) else []
    _load_adapter(host, name, path, prefix)
    for key, param in host.named_parameters():
        if f".{name}." in key:
            param.requires_grad_(False)
    # Loading activates the new adapter; restore what ran before (the student's, or none).
    with _restoring_requires_grad(host):
        host.set_adapters(active)


def has_student_adapter(module) -> bool:
    return STUDENT_ADAPTER in getattr(module, "peft_config", {})


def replace_student_adapter(module, path: str, prefix: str) -> None:
    """Make a saved LoRA the student's adapter (its own rank and alpha, from the saved metadata)."""
    if has_student_adapter(module):
        module.delete_adapters(STUDENT_ADAPTER)
    _load_adapter(module, STUDENT_ADAPTER, path, prefix)
    module.set_adapters([STUDENT_ADAPTER])


def _load_adapter(module, name: str, path: str, prefix: str) -> None:
    try:
        with warnings.catch_warnings():  # several adapters on one model is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            module.load_lora_adapter(path, prefix=prefix, adapter_name=name, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"cannot load LoRA {name!r} from {path}: {exc}") from exc


@contextmanager
def _restoring_requires_grad(module):
    flags = [(param, param.requires_grad) for param in module.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@contextmanager
def _adapters_off(module):
    with _restoring_requires_grad(module):
        module.disable_adapters()
        try:
            yield
        finally:
            module.enable_adapters()


def adapters_disabled(module):
    """The base model: every adapter off for the duration (a no-op without adapters)."""
    if not getattr(module, "_hf_peft_config_loaded", False):
        return nullcontext()
    return _adapters_off(module)


@contextmanager
def only_adapter(module, name: str):
    """Only adapter ``name`` active for the duration."""
    previous = module.active_adapters()
    with _restoring_requires_grad(module):
        module.set_adapters([name])
        try:
            yield
        finally:
            module.set_adapters(previous)


def student_state_dict(module, diffusers_format: bool) -> dict[str, torch.Tensor]:
    """The student adapter's weights, keyed as the family's diffusers training script saves them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, adapter_name=STUDENT_ADAPTER)
    return convert_state_dict_to_diffusers(state) if diffusers_format else state


def student_metadata(module) -> dict:
    """The student adapter's LoraConfig, saved beside the weights so alpha/rank reload exactly."""
    return module.peft_config[STUDENT_ADAPTER].to_dict()
