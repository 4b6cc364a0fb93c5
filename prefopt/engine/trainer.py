"""The training loop: accelerate for devices, precision and processes; no hidden Trainer.

Every random draw of a step (which pairs, which timesteps, which noise) comes
from a generator seeded by (seed, step, micro-step, process), and the data order
is a seeded permutation per epoch. So a run resumed from a checkpoint draws
exactly what the uninterrupted run would have drawn, and its final weights are
bitwise equal on the CPU.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefopt.data.pairset import write_atomic
from prefopt.engine.checkpoint import list_checkpoints, load_checkpoint, remove_leftovers, save_checkpoint
from prefopt.engine.step import FusedStep, PairBatch
from prefopt.errors import PrefoptError, require
from prefopt.interfaces import Backbone, Objective
from prefopt.recipe import TrainConfig

log = logging.getLogger(__name__)


class RunStopped(PrefoptError):
    """A signal asked the run to stop; it saved a checkpoint first."""

    exit_code = 143


@dataclass
class TrainResult:
    skipped_steps: int


def step_generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class EpochSampler:
    """Indices for any global sample position: a fresh seeded permutation per epoch."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def take(self, position: int, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            epoch, offset = divmod(position, self.size)
            if epoch != self._epoch:
                self._perm = torch.randperm(self.size, generator=step_generator(self.seed, epoch, 7))
                self._epoch = epoch
            chunk = self._perm[offset : offset + count - len(out)].tolist()
            out += chunk
            position += len(chunk)
        return out


def make_optimizer(cfg: TrainConfig, params, lr: float):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        bnb = require("bitsandbytes", "optim")
        return bnb.optim.AdamW8bit(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                     weight_decay=cfg.weight_decay)


class _StopFlag:
    """Turns SIGTERM / SIGINT into a request to stop after the current step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def train(
    *,
    backbone: Backbone,
    objective: Objective,
    dataset,
    cfg: TrainConfig,
    run_dir: Path,
    seed: int,
    accelerator,
    resume_from: Path | None = None,
) -> TrainResult:
    run_dir = Path(run_dir)
    world = accelerator.num_processes
    rank = accelerator.process_index
    effective_batch = cfg.batch_size * cfg.grad_accum * world
    lr = cfg.lr * effective_batch if cfg.scale_lr else cfg.lr

    params = list(backbone.trainable_parameters())
    if not params:
        raise PrefoptError("the backbone has no trainable parameters (check backbone.finetune)")
    optimizer = make_optimizer(cfg, params, lr)
    from diffusers.optimization import get_scheduler

    # diffusers' "constant" ignores warmup; the published recipes warm up a constant lr.
    schedule = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=max(cfg.max_steps, 1))
    module, optimizer, scheduler = accelerator.prepare(backbone.trainable_module(), optimizer, scheduler)
    backbone.set_trainable_module(module)
    encode = None
    if cfg.text_cache:
        from prefopt.engine.text_cache import TextCache

        prompts = [text for row in dataset.rows for text in (row["prompt"], row["negative"])]
        encode = TextCache.build(run_dir / "text_cache", backbone, prompts, cfg.batch_size * 4, accelerator).encode
    step_fn = FusedStep(backbone, objective, cfg.reference_micro_batch, encode=encode)
    sampler = EpochSampler(len(dataset), seed)

    start, skipped = 0, 0
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        start, skipped = state["step"], state.get("skipped_steps", 0)
        log.info("resumed from %s at step %d", resume_from, start)

    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        _truncate_metrics(metrics_path, start)
        remove_leftovers(run_dir)

    def reduce_mean(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x.detach().clone(), reduction="mean") if world > 1 else x

    def checkpoint(step: int) -> Path:
        return save_checkpoint(accelerator, run_dir, step, {"skipped_steps": skipped}, cfg.keep_checkpoints)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=start, unit="step", disable=not accelerator.is_main_process,
               desc="training")
    module.train()
    # One handle for the whole run (main process only); each line is flushed as it is written.
    log_file = open(metrics_path, "a") if accelerator.is_main_process else nullcontext()
    with log_file, bar, _StopFlag() as stop:  # the bar ends its line before any error is printed
        for step in range(start, cfg.max_steps):
            began = time.perf_counter()
            metrics, loss_ok = _accumulate(step_fn, dataset, sampler, cfg, step, seed, rank, world,
                                           accelerator, module, reduce_mean)
            if world > 1:
                metrics = _mean_over_processes(metrics, loss_ok, accelerator)
            # With more processes every one computes the norm (a collective under FSDP).
            grad_norm = (_grad_norm(accelerator, params, cfg.max_grad_norm) if loss_ok or world > 1
                         else torch.tensor(float("nan")))
            if not (loss_ok and _finite(grad_norm)):
                what = "loss" if not loss_ok else "gradient norm"
                if cfg.on_nonfinite == "stop":
                    good = list_checkpoints(run_dir)
                    kept = f"last good checkpoint: {good[-1]}" if good else "no checkpoint was written yet"
                    # Steps are counted from 1 here, as in metrics.jsonl and the checkpoint names.
                    raise PrefoptError(f"non-finite {what} at step {step + 1}; stopping ({kept})")
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                log.warning("non-finite %s at step %d: step skipped (%d so far)", what, step + 1, skipped)
            else:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            done = step + 1
            elapsed = time.perf_counter() - began
            metrics.update({
                "step": done,
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "skipped_steps": skipped,
                "perf/pairs_per_s": effective_batch / max(elapsed, 1e-9),
            })
            if accelerator.is_main_process and (done % cfg.log_every == 0 or done == cfg.max_steps):
                log_file.write(json.dumps(metrics) + "\n")
                log_file.flush()
                shown = {"loss": f"{metrics['loss']:.4f}"}
                if "pref/accuracy" in metrics:
                    shown["acc"] = f"{metrics['pref/accuracy']:.2f}"
                bar.set_postfix(shown)
            bar.update(1)
            stopping = stop.signal_name is not None
            if world > 1:  # all processes stop after the same step, or the checkpoint's barrier hangs
                flag = torch.tensor([float(stopping)], device=accelerator.device)
                stopping = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            if stopping:
                path = checkpoint(done)
                bar.close()
                raise RunStopped(f"stopped by {stop.signal_name or 'a signal to another process'} after step "
                                 f"{done}; checkpoint {path}; continue with --resume")
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                checkpoint(done)
    bar.close()
    return TrainResult(skipped_steps=skipped)


def _accumulate(step_fn, dataset, sampler, cfg, step, seed, rank, world, accelerator, module, reduce_mean):
    """Forward/backward over the micro-steps of one optimizer step; mean metrics."""
    sums: dict[str, float] = {}
    loss_ok = True
    for micro in range(cfg.grad_accum):
        position = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
        x0_w, x0_l, prompts, negatives = dataset.batch(sampler.take(position, cfg.batch_size))
        batch = PairBatch(x0_w, x0_l, prompts, negatives)
        sync = nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(module)
        with sync, accelerator.autocast():
            out = step_fn(batch, step_generator(seed, step, micro, rank), accelerator.device, reduce_mean)
        finite = _finite(out.loss.detach())
        if not finite:
            loss_ok = False
            if world == 1:
                break
            # With more processes every one must join each gradient all-reduce; the
            # non-finite gradients it spreads make every process skip (or stop) this step.
        accelerator.backward(out.loss / cfg.grad_accum)
        if finite:
            for key, value in {"loss": float(out.loss.detach()), **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / cfg.grad_accum
    if not loss_ok:
        sums.setdefault("loss", float("nan"))
    return sums, loss_ok


def _mean_over_processes(metrics: dict[str, float], loss_ok: bool, accelerator) -> dict[str, float]:
    """Logged metrics as the mean over all processes' batches, not process 0's alone.

    Only when every process had a finite loss: then all hold the same keys (one
    objective, one code path), so the collectives line up.
    """
    all_ok = accelerator.reduce(torch.tensor([float(loss_ok)], device=accelerator.device), reduction="sum")
    if all_ok.item() < accelerator.num_processes:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, reduction="mean").tolist()))


def _grad_norm(accelerator, params, max_norm: float | None) -> torch.Tensor:
    if max_norm is not None:
        return accelerator.clip_grad_norm_(params, max_norm)
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.tensor(0.0)


def _truncate_metrics(path: Path, start: int) -> None:
    """On resume, drop lines logged after the checkpoint so the log has no repeats."""
    if not path.exists():
        return
    if start == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= start:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill or a full disk
            continue
    # Atomic, so a kill now cannot lose the lines of the steps already done.
    write_atomic(path, "".join(line + "\n" for line in kept).encode())
