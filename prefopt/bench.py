"""``prefopt bench``: time the fused training step of a recipe and record it.

Batches are random data of the backbone's shape with the recipe's prompts
repeated, so a benchmark needs no pair dataset: it measures the step (one
reference forward, one student forward and backward, the optimizer), not I/O.
The result is appended to docs/performance.md with the machine it ran on.
"""

from __future__ import annotations

import platform
import resource
import time
from datetime import date
from pathlib import Path

from prefopt.recipe import ResolvedRecipe


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    import os

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, torch {torch.__version__}"


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_bench(resolved: ResolvedRecipe, registry, steps: int, output: Path, overrides: list[str] = ()) -> dict:
    import torch

    from prefopt.engine.step import FusedStep, PairBatch
    from prefopt.engine.trainer import make_optimizer, step_generator
    from prefopt.pipeline import make_accelerator, runtime_for

    recipe = resolved.recipe
    accelerator = make_accelerator(recipe.train)
    backbone = registry.get("backbone", recipe.backbone.name)(resolved.config("backbone"))
    objective = registry.get("objective", recipe.objective.name)(resolved.config("objective"))
    backbone.load(runtime_for(accelerator), objective.policies())
    optimizer = make_optimizer(recipe.train, list(backbone.trainable_parameters()), recipe.train.lr)
    module, optimizer = accelerator.prepare(backbone.trainable_module(), optimizer)
    backbone.set_trainable_module(module)
    step = FusedStep(backbone, objective, recipe.train.reference_micro_batch)

    n = recipe.train.batch_size
    shape = backbone.identity()["data_shape"]
    prompts = [str(i % 2) for i in range(n)]  # valid for the toy; text backbones take any string
    negatives = [str((i + 1) % 2) for i in range(n)]

    def one_step(i: int) -> None:
        g = step_generator(recipe.seed, i, 0, 0)
        batch = PairBatch(torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g), prompts, negatives)
        with accelerator.autocast():
            out = step(batch, g, accelerator.device)
        accelerator.backward(out.loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step(0)  # warm-up: allocations, kernels, lazy init
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for i in range(1, steps + 1):
        one_step(i)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    result = {
        "recipe": " ".join([resolved.source, *overrides]), "backbone": recipe.backbone.name, "objective": recipe.objective.name,
        "batch_pairs": n, "step_s": seconds, "pairs_per_s": n / seconds, "peak_mib": peak_memory_mib(),
        "precision": recipe.train.mixed_precision, "machine": machine_description(),
    }
    _append(output, result)
    print(f"{result['pairs_per_s']:.1f} pairs/s, {seconds * 1000:.1f} ms/step, peak {result['peak_mib']:.0f} MiB "
          f"on {result['machine']} -> {output}")
    return result


def _append(output: Path, r: dict) -> None:
    header = ("| date | recipe | backbone | objective | pairs/step | ms/step | pairs/s | peak MiB | precision | machine |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    row = (f"| {date.today()} | {r['recipe']} | {r['backbone']} | {r['objective']} | {r['batch_pairs']} | "
           f"{r['step_s'] * 1000:.1f} | {r['pairs_per_s']:.1f} | {r['peak_mib']:.0f} | {r['precision']} | {r['machine']} |\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    if not output.exists():
        output.write_text("# Performance\n\nWritten by `prefopt bench`; each row names the machine it ran on.\n\n")
    text = output.read_text()
    if "| date | recipe |" not in text:
        text += "\n" + header
    output.write_text(text + row)
