"""``prefopt bench``: time the training step ``prefopt run`` takes, against the official DDSPO step.

The step timed is the trainer's own ``Trainer.train_step`` (micro-steps with
gradient accumulation, clipping, the optimizer, the learning-rate schedule),
set up by ``Trainer.setup`` from the recipe, on pairs with the recipe's
prompts: the recipe's pair dataset when it is built, otherwise a scratch
dataset of the pair source's prompts with random x0 data (the step's cost
does not depend on the pixels). Each repetition runs the fused step and the
naive step (``prefopt.engine.naive_step``: 4 reference forwards per pair in
two calls and the text encoder every step, as the official DDSPO code does),
in the same process on the same model, in alternating order, so that a
loaded machine slows both alike; medians are reported.

Reported per step kind: seconds per optimizer step, pairs/s, peak memory
(GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident
set during the step, ``VmHWM`` after resetting it), model FLOPs per pair
(``torch.utils.flop_counter.FlopCounterMode`` around one step: text encoder,
reference and student forwards, backward) and, on a GPU, model-FLOPs
utilisation against the device's dense peak for the step's dtype. Pair
generation (the pair builder's sampling of one shard chunk) is timed in
images/s.

Rows go to a markdown file: ``--output``, by default ``<output_dir>/bench.md``
of the recipe. Nothing else is written outside a temporary directory.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from prefopt.errors import PrefoptError
from prefopt.recipe import ResolvedRecipe

# Dense peak TFLOP/s per device and math dtype (vendor datasheets, without sparsity).
# Matched against torch.cuda.get_device_name() in this order (the first key it contains).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5},  # SXM / HBM3
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0},
}


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def peak_memory_mib() -> float:
    """The process's peak so far: GPU allocations on a GPU, resident memory on a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_tflops(device_name: str, math_dtype: str) -> float | None:
    """The device's dense peak for ``math_dtype`` (bf16, fp16, tf32), or None when not in the table."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(math_dtype)
    return None


def math_dtype(mixed_precision: str) -> str:
    """The tensor-core dtype a step's matmuls run in (float32 runs as TF32 when allowed)."""
    return {"bf16": "bf16", "fp16": "fp16"}.get(mixed_precision, "tf32")


class StepMemory:
    """Peak memory of one timed region: CUDA's allocator peak, or the peak RSS (Linux ``VmHWM``).

    On a CPU the kernel's high-water mark is reset before the region (``/proc/self/clear_refs``
    with 5), so each region's peak is its own, not the process's since start.
    """

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    def peak_mib(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return peak_memory_mib()


def _pair_rows(resolved: ResolvedRecipe, registry, count: int) -> list:
    """The first ``count`` rows (prompt, degraded, seed) of the recipe's pair source."""
    from itertools import islice

    recipe = resolved.recipe
    prompts = None
    if recipe.pairs.prompts:
        from prefopt.data.prompts import load_prompts

        prompts = load_prompts(recipe.pairs.prompts, base_dir=Path(resolved.source).parent)
    source = registry.get("pair_source", recipe.pairs.source.name)(resolved.config("pairs", "source"))
    rows = list(islice(source.pairs(prompts, recipe.seed), count))
    if not rows:
        raise PrefoptError(f"pair source {recipe.pairs.source.name!r} gave no rows to bench with")
    return rows


def bench_dataset(resolved: ResolvedRecipe, registry, backbone, scratch: Path, count: int):
    """The recipe's built pair dataset, or a scratch one of its source's prompts with random x0."""
    import torch

    from prefopt.data.build import build_pair_dataset, is_complete
    from prefopt.data.pairset import PairDataset, dataset_header, resolve_latent_dtype
    from prefopt.interfaces import PromptPair

    recipe = resolved.recipe
    identity = backbone.data_signature()
    built = Path(recipe.pairs.dir or Path(recipe.output_dir) / "pairs")
    if is_complete(built):
        return PairDataset(built, identity=identity), f"pairs of {built}"
    generator = torch.Generator().manual_seed(recipe.seed)
    shape = identity["data_shape"]
    rows = [PromptPair(prompt=row.prompt, degraded=row.degraded, seed=row.seed,
                       winner=torch.randn(shape, generator=generator), loser=torch.randn(shape, generator=generator))
            for row in _pair_rows(resolved, registry, count)]
    header = dataset_header(identity, {"bench": len(rows), "seed": recipe.seed}, recipe.pairs.shard_size,
                            resolve_latent_dtype(recipe.pairs.latent_dtype, identity))
    directory = scratch / "pairs"
    build_pair_dataset(directory, rows, backbone, header, recipe.pairs.sample_batch_size)
    return PairDataset(directory, identity=identity), f"{len(rows)} prompt pairs of the recipe's source, random x0"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step_flops(trainer, step: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step(step)
    return counter.get_total_flops()


def time_training_steps(trainer, steps_fns: dict, repetitions: int, first_step: int) -> dict[str, dict]:
    """Interleaved timing of ``trainer.train_step`` with each step function; per kind: times, peaks, FLOPs.

    Each kind runs once untimed first (lazy initialisation, allocator warm-up), and once under the
    FLOP counter. The order alternates every repetition (A B, B A, ...).
    """
    memory = StepMemory()
    kinds = list(steps_fns)
    step = first_step
    results = {kind: {"seconds": [], "peak_mib": []} for kind in kinds}
    for kind in kinds:
        trainer.step_fn = steps_fns[kind]
        trainer.train_step(step)
        results[kind]["flops"] = _step_flops(trainer, step + 1)
        step += 2
    for rep in range(repetitions):
        for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
            trainer.step_fn = steps_fns[kind]
            memory.reset()
            _sync()
            began = time.perf_counter()
            trainer.train_step(step)
            _sync()
            results[kind]["seconds"].append(time.perf_counter() - began)
            results[kind]["peak_mib"].append(memory.peak_mib())
            step += 1
    return results


def time_generation(backbone, rows: list, sample_batch_size: int, repetitions: int) -> list[float]:
    """Seconds to sample one chunk of pairs the way the pair builder does (winner and loser of each row)."""
    from prefopt.data.build import _shard_tensors

    pairs = rows[:sample_batch_size]
    _shard_tensors(backbone, pairs, sample_batch_size, "float32")  # warm-up
    seconds = []
    for _ in range(repetitions):
        _sync()
        began = time.perf_counter()
        _shard_tensors(backbone, pairs, sample_batch_size, "float32")
        _sync()
        seconds.append(time.perf_counter() - began)
    return seconds


def run_bench(resolved: ResolvedRecipe, registry, steps: int, output: Path | None, overrides: list[str] = (),
              generation: bool = True) -> dict:
    """Time the fused and the naive training step (and pair generation); append the rows to ``output``."""
    import torch

    from prefopt.accelerate_setup import load_backbone
    from prefopt.engine.naive_step import NaiveStep, naive_step_applies
    from prefopt.engine.trainer import Trainer
    from prefopt.rundir import BENCH_ROWS

    recipe = resolved.recipe
    if steps < 1:
        raise PrefoptError(f"--steps must be at least 1 (got {steps})")
    output = Path(output or Path(recipe.output_dir) / BENCH_ROWS)
    read_rows(output, TITLE)  # a file the rows cannot go to is refused before minutes of timing
    repetitions = steps
    # The recipe's step, without what a bench must not do: trackers, validation, checkpoints.
    # Enough optimizer steps for the schedule: warm-up and FLOP count (2 per kind) + the timed ones.
    total_steps = 4 + 2 * repetitions
    train_cfg = recipe.train.model_copy(update={
        "report_to": [], "validate_every": 0, "checkpoint_every": 0, "max_steps": total_steps})
    backbone = registry.get("backbone", recipe.backbone.name)(resolved.config("backbone"))
    objective = registry.get("objective", recipe.objective.name)(resolved.config("objective"))
    accelerator = load_backbone(backbone, train_cfg, seed=recipe.seed, policies=objective.policies())
    effective = train_cfg.batch_size * train_cfg.grad_accum * accelerator.num_processes
    scratch = Path(tempfile.mkdtemp(prefix="prefopt-bench-"))
    try:
        rows = _pair_rows(resolved, registry, max(recipe.pairs.sample_batch_size, 1))
        gen_seconds = (time_generation(backbone, rows, recipe.pairs.sample_batch_size, repetitions)
                       if generation else [])
        dataset, data_note = bench_dataset(resolved, registry, backbone, scratch,
                                           count=min(512, effective * total_steps))
        trainer = Trainer(backbone=backbone, objective=objective, dataset=dataset, cfg=train_cfg,
                          run_dir=scratch / "run", seed=recipe.seed, accelerator=accelerator)
        (scratch / "run").mkdir()
        try:
            trainer.setup()
            trainer.module.train()
            step_fns = {"fused": trainer.step_fn}
            if naive_step_applies(objective):
                step_fns["naive"] = NaiveStep(backbone, objective, train_cfg.reference_micro_batch,
                                              rewrite=trainer.step_fn.rewrite)
            timed = time_training_steps(trainer, step_fns, repetitions, first_step=0)
        finally:
            trainer.cleanup()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    device = machine_description()
    peak = peak_tflops(device, math_dtype(train_cfg.mixed_precision)) if torch.cuda.is_available() else None
    kinds = {}
    for kind, r in timed.items():
        step_s = statistics.median(r["seconds"])
        flops_per_pair = r["flops"] / effective
        kinds[kind] = {
            "step_s": step_s, "pairs_per_s": effective / step_s, "peak_mib": statistics.median(r["peak_mib"]),
            "flops_per_pair": flops_per_pair,
            "mfu": flops_per_pair * effective / step_s / (peak * 1e12) if peak else None,
            "spread": (min(r["seconds"]), max(r["seconds"])),
        }
    result = {
        "recipe": " ".join([resolved.source, *overrides]), "backbone": recipe.backbone.name,
        "objective": recipe.objective.name, "batch": f"{train_cfg.batch_size}x{train_cfg.grad_accum}",
        "precision": train_cfg.mixed_precision, "machine": device, "repetitions": repetitions, "data": data_note,
        "steps": kinds,
        "ratio": kinds["fused"]["step_s"] / kinds["naive"]["step_s"] if "naive" in kinds else None,
        "memory_ratio": kinds["fused"]["peak_mib"] / kinds["naive"]["peak_mib"] if "naive" in kinds else None,
    }
    if gen_seconds:
        images = 2 * min(len(rows), recipe.pairs.sample_batch_size)
        result["generation"] = {"images": images, "images_per_s": images / statistics.median(gen_seconds)}
    _append(output, result)
    _print(result, output)
    return result


def _print(result: dict, output: Path) -> None:
    for kind, r in result["steps"].items():
        mfu = f", MFU {r['mfu'] * 100:.1f}%" if r["mfu"] is not None else ""
        print(f"{kind}: {r['step_s'] * 1000:.1f} ms/step ({r['spread'][0] * 1000:.0f}-{r['spread'][1] * 1000:.0f}), "
              f"{r['pairs_per_s']:.1f} pairs/s, peak {r['peak_mib']:.0f} MiB, "
              f"{r['flops_per_pair'] / 1e9:.3f} GFLOP/pair{mfu}")
    if result["ratio"] is not None:
        print(f"fused/naive: {result['ratio']:.3f}x time, {result['memory_ratio']:.3f}x peak memory")
    if "generation" in result:
        print(f"pair generation: {result['generation']['images_per_s']:.2f} images/s")
    print(f"on {result['machine']} ({result['repetitions']} interleaved repetitions, medians) -> {output}")


TITLE = "# prefopt bench\n\nWritten by `prefopt bench`.\n\n"
HEADER = ("| date | recipe | batch×accum | precision | step | ms/step | pairs/s | peak MiB | GFLOP/pair | MFU | "
          "fused/naive time | fused/naive memory | gen images/s | machine |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def read_rows(output: Path, title: str) -> str:
    """The rows file's text so far (``title`` for a new one), or one line saying why rows cannot be added."""
    from prefopt.errors import file_errors

    if output.exists() and not output.is_file():
        raise PrefoptError(f"--output {output} is not a file")
    # The rows are written beside the file and renamed over it (after any missing folders are made), so it
    # is the nearest existing folder that must take new files, checked here before minutes of timing.
    folder = output.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise PrefoptError(f"--output {output} cannot be written: {folder} is not a writable folder "
                           "(read-only or no permission); pass --output with a writable location")
    with file_errors(output, "read"):
        raw = output.read_bytes() if output.exists() else title.encode()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrefoptError(f"--output {output} is not UTF-8 text (byte {exc.start}): name another file") from None


# Line breaks (Unicode's too) and other control characters: one would end a table row and start a forged one.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def cell(value) -> str:
    """``value`` as one markdown table cell, whatever a user's override put in it (a newline, a ``|``)."""
    return _CONTROL.sub(" ", str(value)).replace("\\", "\\\\").replace("|", "\\|")


def _append(output: Path, r: dict) -> None:
    from prefopt.atomic import write_atomic
    from prefopt.errors import file_errors

    lines = []
    for kind, s in r["steps"].items():
        fused = kind == "fused"
        cells = [
            date.today(), r["recipe"], r["batch"], r["precision"], kind, f"{s['step_s'] * 1000:.1f}",
            f"{s['pairs_per_s']:.1f}", f"{s['peak_mib']:.0f}", f"{s['flops_per_pair'] / 1e9:.3f}",
            "%.1f%%" % (s["mfu"] * 100) if s["mfu"] is not None else "n/a (CPU)",
            "%.3f" % r["ratio"] if fused and r["ratio"] is not None else "",
            "%.3f" % r["memory_ratio"] if fused and r["memory_ratio"] is not None else "",
            "%.2f" % r["generation"]["images_per_s"] if fused and "generation" in r else "",
            f"{r['machine']}, median of {r['repetitions']}",
        ]
        lines.append("| " + " | ".join(map(cell, cells)) + " |\n")
    text = read_rows(output, TITLE)
    if "| step | ms/step |" not in text:
        text += "\n" + HEADER
    with file_errors(output, "write"):
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output, (text + "".join(lines)).encode())
