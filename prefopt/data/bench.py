"""``prefopt bench --data``: measure the pair data path of a recipe at real sizes.

A synthetic pair dataset of the recipe backbone's data shape (random x0 data,
``--pairs`` rows, the recipe's shard size and stored dtype) is written by the
real builder, then three things are measured:

- **bytes read per optimizer step**, random order, cold cache: the shard files
  are dropped from the page cache (``posix_fadvise(DONTNEED)``), then the disk
  reads of the process (``read_bytes`` in ``/proc/self/io``) are counted over
  optimizer steps of ``batch_size × grad_accum`` pairs, and compared with the
  bytes of the pairs those steps use (winner and loser rows);
- **loader throughput** from the page cache: pairs/s the DataLoader (the
  recipe's ``train.loader_workers``) hands to the training process;
- **data wait**: the share of step time the training loop spends blocked on the
  next batch, over ``--steps`` fused training steps (reference and student
  forward, backward, optimizer) fed by the loader, after one warm-up step.

The rows are appended to a markdown file (default ``<output_dir>/bench-data.md``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Iterator

from prefopt.errors import PrefoptError
from prefopt.recipe import ResolvedRecipe


def synthetic_pairs(count: int, shape: list[int], seed: int) -> Iterator:
    """Random x0 pairs as a stream (given data, so nothing is sampled), with a few hundred distinct prompts."""
    import torch

    from prefopt.interfaces import PromptPair

    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        yield PromptPair(prompt=f"p{i % 997}", degraded=f"n{i % 997}", seed=i,
                         winner=torch.randn(shape, generator=generator),
                         loser=torch.randn(shape, generator=generator))


def disk_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (page-cache hits excluded)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def _shard_files(directory: Path) -> list[Path]:
    return sorted((directory / "shards").glob("shard-*.safetensors"))


def drop_from_page_cache(directory: Path) -> None:
    for path in _shard_files(directory):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(directory: Path) -> None:
    for path in _shard_files(directory):
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def build_synthetic(directory: Path, backbone, recipe, count: int) -> Path:
    """The synthetic dataset, built by the real builder (reused when complete)."""
    from prefopt.data.build import build_pair_dataset, verify_pair_dataset
    from prefopt.data.pairset import dataset_header, resolve_latent_dtype

    identity = backbone.data_signature()
    header = dataset_header(identity, {"synthetic": count, "seed": recipe.seed}, recipe.pairs.shard_size,
                            resolve_latent_dtype(recipe.pairs.latent_dtype, identity))
    if not verify_pair_dataset(directory, header, full=False):
        build_pair_dataset(directory, synthetic_pairs(count, identity["data_shape"], recipe.seed), backbone, header,
                           recipe.pairs.sample_batch_size)
    return directory


def bytes_per_step(directory: Path, train, seed: int, steps: int) -> dict:
    """Disk bytes read per optimizer step with a cold cache, against the bytes of the pairs used."""
    from prefopt.data.loader import sample_position
    from prefopt.data.pairset import PairDataset
    from prefopt.engine.trainer import EpochSampler

    dataset = PairDataset(directory)
    sampler = EpochSampler(len(dataset), seed)
    drop_from_page_cache(directory)
    before = disk_read_bytes()
    pair_bytes = 0
    for step in range(steps):
        for micro in range(train.grad_accum):
            x0_w, x0_l, _, _ = dataset.batch(sampler.take(
                sample_position(step, micro, 0, 1, train.batch_size, train.grad_accum), train.batch_size))
            pair_bytes += x0_w.numel() * x0_w.element_size() + x0_l.numel() * x0_l.element_size()
    disk = disk_read_bytes() - before
    return {"disk_bytes_per_step": disk / steps, "row_bytes_per_step": dataset.bytes_read / steps,
            "pair_bytes_per_step": pair_bytes / steps}


def loader_throughput(directory: Path, train, seed: int, seconds: float = 5.0) -> float:
    """Pairs/s the loader delivers from the page cache (after its first batch: workers started)."""
    from prefopt.data.loader import BatchLoader
    from prefopt.data.pairset import PairDataset
    from prefopt.engine.trainer import EpochSampler

    dataset = PairDataset(directory)
    warm_page_cache(directory)
    loader = BatchLoader(dataset, EpochSampler(len(dataset), seed), batch_size=train.batch_size, grad_accum=1,
                         rank=0, world=1, start=0, max_steps=1 << 30, workers=train.loader_workers,
                         prefetch=train.loader_prefetch)
    loader.batch(0, 0)
    began, step = time.perf_counter(), 1
    while time.perf_counter() - began < seconds:
        loader.batch(step, 0)
        step += 1
    elapsed = time.perf_counter() - began
    loader.close()
    return (step - 1) * train.batch_size / elapsed


def data_wait_share(directory: Path, backbone, objective, train, seed: int, steps: int, accelerator) -> dict:
    """Share of step time spent waiting for the next batch, in fused training steps fed by the loader."""
    import torch

    from prefopt.data.loader import BatchLoader
    from prefopt.data.pairset import PairDataset
    from prefopt.engine.step import FusedStep, PairBatch
    from prefopt.engine.trainer import EpochSampler, make_optimizer, step_generator

    dataset = PairDataset(directory)
    optimizer = make_optimizer(train, list(backbone.trainable_parameters()), train.lr)
    module, optimizer = accelerator.prepare(backbone.trainable_module(), optimizer)
    backbone.set_trainable_module(module)
    fused = FusedStep(backbone, objective, train.reference_micro_batch)
    loader = BatchLoader(dataset, EpochSampler(len(dataset), seed), batch_size=train.batch_size,
                         grad_accum=train.grad_accum, rank=0, world=1, start=0, max_steps=steps + 1,
                         workers=train.loader_workers, prefetch=train.loader_prefetch)
    waited = total = 0.0
    for step in range(steps + 1):  # step 0 warms up (workers start, lazy init) and is not counted
        began = time.perf_counter()
        step_wait = 0.0
        for micro in range(train.grad_accum):
            asked = time.perf_counter()
            batch = PairBatch(*loader.batch(step, micro))
            step_wait += time.perf_counter() - asked
            with accelerator.autocast():
                out = fused(batch, step_generator(seed, step, micro, 0), accelerator.device)
            accelerator.backward(out.loss / train.grad_accum)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step:
            waited += step_wait
            total += time.perf_counter() - began
    loader.close()
    return {"step_s": total / steps, "wait_share": waited / total}


def run_data_bench(resolved: ResolvedRecipe, registry, *, pairs: int, steps: int, output: Path | None,
                   data_dir: Path | None, overrides: list[str] = ()) -> dict:
    from prefopt.accelerate_setup import load_backbone
    from prefopt.bench import machine_description, read_rows
    from prefopt.rundir import BENCH_DATA_ROWS

    recipe = resolved.recipe
    train = recipe.train
    if steps < 0:
        raise PrefoptError(f"--steps must be 0 (no training steps timed) or more (got {steps})")
    output = Path(output or Path(recipe.output_dir) / BENCH_DATA_ROWS)
    read_rows(output, TITLE)  # a file the rows cannot go to is refused before the dataset is built
    backbone = registry.get("backbone", recipe.backbone.name)(resolved.config("backbone"))
    objective = registry.get("objective", recipe.objective.name)(resolved.config("objective"))
    accelerator = load_backbone(backbone, train, policies=objective.policies())
    scratch = None
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="prefopt-bench-data-"))
        data_dir = scratch / "pairs"
    try:
        build_synthetic(Path(data_dir), backbone, recipe, pairs)
        io = bytes_per_step(Path(data_dir), train, recipe.seed, steps=max(steps, 5))
        throughput = loader_throughput(Path(data_dir), train, recipe.seed)
        wait = (data_wait_share(Path(data_dir), backbone, objective, train, recipe.seed, steps, accelerator)
                if steps else {"step_s": float("nan"), "wait_share": float("nan")})
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "recipe": " ".join([resolved.source, *overrides]), "shape": "x".join(map(str, backbone.data_signature()["data_shape"])),
        "dtype": recipe.pairs.latent_dtype, "pairs": pairs, "batch": f"{train.batch_size}x{train.grad_accum}",
        "workers": train.loader_workers, **io, "loader_pairs_per_s": throughput, **wait,
        "machine": machine_description(),
    }
    _append(output, result)
    print(f"{result['shape']}: disk {io['disk_bytes_per_step'] / 2**20:.2f} MiB/step for "
          f"{io['pair_bytes_per_step'] / 2**20:.2f} MiB of pairs "
          f"({io['disk_bytes_per_step'] / io['pair_bytes_per_step']:.2f}x); loader {throughput:.0f} pairs/s; "
          + (f"data wait {wait['wait_share'] * 100:.1f}% of {wait['step_s'] * 1000:.0f} ms/step " if steps else "")
          + f"-> {output}")
    return result


TITLE = "# Data path benchmarks (`prefopt bench --data`)\n\n"


def _append(output: Path, r: dict) -> None:
    from prefopt.atomic import write_atomic
    from prefopt.bench import cell, read_rows

    header = ("| date | recipe | data shape | pairs | batch×accum | workers | disk MiB/step | pair MiB/step | "
              "read/pairs | loader pairs/s | ms/step | data wait | machine |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    timed = r["wait_share"] == r["wait_share"]  # NaN with --steps 0: no training steps timed
    cells = [date.today(), r["recipe"], r["shape"], r["pairs"], r["batch"], r["workers"],
             f"{r['disk_bytes_per_step'] / 2**20:.2f}", f"{r['pair_bytes_per_step'] / 2**20:.2f}",
             f"{r['disk_bytes_per_step'] / r['pair_bytes_per_step']:.2f}x", f"{r['loader_pairs_per_s']:.0f}",
             f"{r['step_s'] * 1000:.0f}" if timed else "—", f"{r['wait_share'] * 100:.1f}%" if timed else "—",
             r["machine"]]
    row = "| " + " | ".join(map(cell, cells)) + " |\n"
    text = read_rows(output, TITLE)
    if "| data shape |" not in text:
        text += "\n" + header
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, (text + row).encode())
