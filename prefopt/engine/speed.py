"""Speed settings of the denoiser: regional torch.compile for training, one graph for sampling, channels-last,
AdamW's kernels.

Regional compilation (the PyTorch recipe "Reducing torch.compile cold start
compilation time with regional compilation"): instead of the whole denoiser,
each block class that repeats is compiled, so the compiler traces one block
and reuses the code for its repeats. The blocks are those the diffusers model
names in ``_repeated_blocks`` (``ModelMixin.compile_repeated_blocks``) plus
the families' own repeated blocks diffusers does not list. ``Module.compile``
compiles in place: parameter names, state dicts and checkpoints stay as they were.
"""

from __future__ import annotations

import torch

# Repeated blocks of the families prefopt trains that diffusers' models do not all list in _repeated_blocks.
REPEATED_BLOCKS = frozenset({
    "BasicTransformerBlock",  # SD / SDXL UNet attention blocks
    "ResnetBlock2D",  # SD / SDXL UNet residual blocks
    "SanaTransformerBlock",
    "JointTransformerBlock",  # SD3 / SD3.5
    "FluxTransformerBlock", "FluxSingleTransformerBlock",
})


def compile_repeated_blocks(module: torch.nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated block of ``module`` in place; returns how many were compiled.

    (``backend``: torch.compile's; the tests use "aot_eager", which traces the same graphs without
    generating kernels.)
    """
    names = REPEATED_BLOCKS | set(getattr(module, "_repeated_blocks", None) or ())
    blocks = [sub for sub in module.modules() if type(sub).__name__ in names]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


SAMPLING_BACKEND = "inductor"
"""torch.compile's backend for ``compiled_for_sampling`` (the tests set "aot_eager": same graph, no kernels)."""


def compiled_for_sampling(module: torch.nn.Module) -> torch.nn.Module:
    """A compiled wrapper of the whole denoiser for sampling; ``module`` itself stays eager.

    Sampling repeats one forward shape many times, so one whole graph pays where regional
    compilation did not (docs/performance.md, pair generation: 1.30x vs no gain on the tiny SD
    UNet on CPU): it also removes the Python and unfused ops between the blocks. The weights stay
    graph inputs (no inductor ``freezing``), so the wrapper follows a student or a LoRA adapter
    that changes between calls.
    """
    return torch.compile(module, backend=SAMPLING_BACKEND)


def to_channels_last(module: torch.nn.Module) -> bool:
    """UNets (4-D convolution weights) to channels-last; a transformer is left as it is. Whether it changed."""
    if not any(isinstance(sub, torch.nn.Conv2d) for sub in module.modules()):
        return False
    module.to(memory_format=torch.channels_last)
    return True


def optimizer_kernel_options(impl: str) -> dict[str, bool]:
    """torch.optim.AdamW's keyword arguments for ``train.optimizer_impl``."""
    return {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True},
            "for-loop": {"foreach": False}}[impl]
