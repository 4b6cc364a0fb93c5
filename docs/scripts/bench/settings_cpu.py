"""A/B of train.channels_last and train.optimizer_impl on one pipeline, interleaved in one process.

    python docs/scripts/bench/settings_cpu.py PIPELINE_DIR [--reps 5] [--batch 8]

Times the fused DDSPO step's forward + backward (full fine-tune) with the UNet in contiguous and in
channels-last memory format, alternating, and AdamW's step over the UNet's parameters with the
for-loop, foreach and fused kernels; prints medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from prefopt.engine.speed import optimizer_kernel_options
    from prefopt.engine.step import FusedStep, PairBatch
    from prefopt.interfaces import Runtime
    from prefopt.registry import PluginRegistry
    from prefopt_backbones.sd import SDBackbone

    backbone = SDBackbone(SDBackbone.Config(pretrained=str(args.pipeline), resolution=16, finetune={"mode": "full"}))
    backbone.load(Runtime(device=torch.device("cpu"), dtype=torch.float32, train=True))
    unet = backbone.trainable_module()
    backbone.set_trainable_module(unet)
    objective = PluginRegistry().get("objective", "ddspo")
    step = FusedStep(backbone, objective(objective.Config()))
    prompts = (args.pipeline / "prompts.txt").read_text().splitlines()
    shape = backbone.data_signature()["data_shape"]
    params = list(unet.parameters())

    def fwd_bwd(i: int) -> float:
        g = torch.Generator().manual_seed(i)
        rows = prompts[: args.batch]
        batch = PairBatch(torch.randn(args.batch, *shape, generator=g), torch.randn(args.batch, *shape, generator=g),
                          rows, [" ".join(p.split()[:2]) for p in rows])
        began = time.perf_counter()
        step(batch, g, torch.device("cpu")).loss.backward()
        return time.perf_counter() - began

    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    times = {name: [] for name in layouts}
    for rep in range(args.reps + 1):
        for name, layout in (layouts.items() if rep % 2 == 0 else reversed(layouts.items())):
            unet.to(memory_format=layout)
            seconds = fwd_bwd(rep)
            if rep:  # the first round warms up
                times[name].append(seconds)
    for name, values in times.items():
        print(f"step fwd+bwd {name}: {statistics.median(values) * 1000:.1f} ms (median of {len(values)})")

    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {impl: torch.optim.AdamW(params, lr=1e-6, **optimizer_kernel_options(impl))
                  for impl in ("for-loop", "foreach", "fused")}
    times = {impl: [] for impl in optimizers}
    for rep in range(args.reps + 1):
        for impl, optimizer in optimizers.items():
            began = time.perf_counter()
            optimizer.step()
            if rep:
                times[impl].append(time.perf_counter() - began)
    n = sum(p.numel() for p in params)
    for impl, values in times.items():
        print(f"AdamW step {impl} ({n / 1e6:.1f} M params): {statistics.median(values) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
