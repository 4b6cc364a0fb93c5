"""Loading diffusers / transformers components: dtypes, hub kwargs, attention kernels.

Imported only from backbone methods (it imports torch), never at plugin import.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch

from prefopt.errors import PrefoptError, require


def torch_dtype(setting: str, runtime_dtype: torch.dtype, trainable: bool) -> torch.dtype:
    """A dtype setting as a torch dtype; "auto" keeps trained weights in float32."""
    if setting == "auto":
        return torch.float32 if trainable else runtime_dtype
    return getattr(torch, setting)


def load_model(
    library: str,
    class_name: str,
    pretrained: str,
    subfolder: str | None,
    revision: str | None,
    variant: str | None,
    dtype: torch.dtype,
):
    """``from_pretrained`` of a diffusers or transformers model, frozen and in eval mode."""
    cls = getattr(importlib.import_module(library), class_name)
    # diffusers still names the argument torch_dtype; transformers 5 renamed it dtype.
    dtype_kwarg = "torch_dtype" if library == "diffusers" else "dtype"
    try:
        model = cls.from_pretrained(
            pretrained, subfolder=subfolder, revision=revision, variant=variant, **{dtype_kwarg: dtype}
        )
    except OSError as exc:
        raise PrefoptError(f"cannot load {class_name} from {_where(pretrained, subfolder)}: {exc}") from exc
    return model.requires_grad_(False).eval()


def load_tokenizer(pretrained: str, subfolder: str, revision: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(pretrained, subfolder=subfolder, revision=revision)
    except OSError as exc:
        raise PrefoptError(f"cannot load the tokenizer from {_where(pretrained, subfolder)}: {exc}") from exc


def load_config(library: str, class_name: str, pretrained: str, subfolder: str | None, revision: str | None):
    """A diffusers component's config.json as a dict, without its weights."""
    cls = getattr(importlib.import_module(library), class_name)
    try:
        return dict(cls.load_config(pretrained, subfolder=subfolder, revision=revision))
    except OSError as exc:
        raise PrefoptError(f"cannot read the {class_name} config from {_where(pretrained, subfolder)}: {exc}") from exc


def _where(pretrained: str, subfolder: str | None) -> str:
    return f"{pretrained!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")


def set_attention(module, attention: str, device: torch.device) -> None:
    """Pick the attention kernel; diffusers' default processors already use torch SDPA."""
    if attention == "sdpa":
        return
    if device.type != "cuda":
        raise PrefoptError("attention: xformers needs a CUDA GPU; use attention: sdpa on this device")
    require("xformers", "xformers")
    module.enable_xformers_memory_efficient_attention()


def frozen_copy(module):
    """An independent, frozen, eval-mode copy of a module (the full fine-tuning reference)."""
    return copy.deepcopy(module).requires_grad_(False).eval()


def input_dtype(module) -> torch.dtype:
    """The dtype a module's inputs must have: that of its (first) weights."""
    return next(module.parameters()).dtype


def cast_floats(tensors: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating tensors to ``dtype``; integer tensors (attention masks, ids) untouched."""
    return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in tensors.items()}
