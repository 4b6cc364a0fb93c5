"""torch.profiler over the fused DDSPO training step on a pipeline directory (CPU or GPU).

    python docs/scripts/bench/profile_step.py PIPELINE_DIR [--mode full|lora] [--batch 8] [--steps 5] [--rows 20]

Loads the ``sd`` backbone from PIPELINE_DIR (e.g. one docs/scripts/bench/models.py wrote), runs
a few warm-up steps of FusedStep + backward + AdamW, then profiles ``--steps``
more and prints the top operators by self time (CPU, or CUDA on a GPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile, record_function

    from prefopt.engine.step import FusedStep, PairBatch
    from prefopt.interfaces import Runtime
    from prefopt.registry import PluginRegistry
    from prefopt_backbones.sd import SDBackbone

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = SDBackbone(SDBackbone.Config(pretrained=str(args.pipeline), resolution=16,
                                            finetune={"mode": args.mode}))
    backbone.load(Runtime(device=device, dtype=torch.float32, train=True))
    backbone.set_trainable_module(backbone.trainable_module())
    objective = PluginRegistry().get("objective", "ddspo")
    step = FusedStep(backbone, objective(objective.Config()))
    params = list(backbone.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    prompts = (args.pipeline / "prompts.txt").read_text().splitlines()
    shape = backbone.data_signature()["data_shape"]

    def one(i: int) -> None:
        g = torch.Generator().manual_seed(i)
        rows = prompts[i * args.batch:(i + 1) * args.batch]
        batch = PairBatch(torch.randn(args.batch, *shape, generator=g), torch.randn(args.batch, *shape, generator=g),
                          rows, [" ".join(p.split()[:2]) for p in rows])
        with record_function("fused_step.forward"):
            out = step(batch, g, device)
        with record_function("backward"):
            out.loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for i in range(3):
        one(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for i in range(3, 3 + args.steps):
            one(i)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
