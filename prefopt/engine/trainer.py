"""The training loop: accelerate for devices, precision and processes; no hidden Trainer.

Every random draw of a step (which pairs, which timesteps, which noise) comes
from a generator seeded by (seed, step, micro-step, process), and the data order
is a seeded permutation per epoch. So a run resumed from a checkpoint draws
exactly what the uninterrupted run would have drawn, and its final weights are
bitwise equal on the CPU.

``Trainer`` is laid out like torchtune's recipe classes: ``setup`` builds
everything a stage needs, ``train`` runs the loop of ``train_step`` calls,
``save_checkpoint`` / ``resume`` write and read the run's state, ``cleanup``
releases what ``setup`` opened. Each other job of the loop (where a micro-step's
batch comes from, the non-finite policy, logging, stop signals) is one method,
so a feature that changes one of them replaces that method alone.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefopt.atomic import write_atomic
from prefopt.engine.checkpoint import list_checkpoints, load_checkpoint, remove_leftovers, save_checkpoint
from prefopt.engine.step import FusedStep, PairBatch
from prefopt.errors import PrefoptError, file_errors, require
from prefopt.interfaces import Backbone, Objective
from prefopt.recipe import TrainConfig

log = logging.getLogger(__name__)


class RunStopped(PrefoptError):
    """A signal asked the run to stop; it saved a checkpoint first."""

    exit_code = 143


@dataclass
class TrainResult:
    skipped_steps: int


@dataclass
class StepResult:
    """What one optimizer step leaves for logging; ``metrics`` stay on the device until a log step."""

    metrics: dict[str, torch.Tensor]
    loss_ok: bool
    grad_norm: torch.Tensor
    lr: float
    skipped_steps: int
    pairs_per_s: float = 0.0


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
        from prefopt.engine.speed import optimizer_kernel_options

        return torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                 **optimizer_kernel_options(cfg.optimizer_impl))
    if cfg.optimizer == "adamw8bit":
        bnb = require("bitsandbytes", "optim")
        return bnb.optim.AdamW8bit(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                     weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer):
    """diffusers' schedule, counted in optimizer steps (warmup and length alike)."""
    from diffusers.optimization import get_scheduler

    # diffusers' "constant" ignores warmup; the published recipes warm up a constant lr.
    schedule = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
    return get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max(cfg.max_steps, 1))


def _finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def _metric_dtype(device: torch.device) -> torch.dtype:
    # float64 sums what float() and Python's sum gave, bit for bit; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class Trainer:
    """One training stage: an objective on a backbone over a pair dataset.

    Call ``setup`` (optionally with a checkpoint to resume from), then ``train``;
    ``cleanup`` runs in any case. ``train()`` below does the three.
    """

    def __init__(self, *, backbone: Backbone, objective: Objective, dataset, cfg: TrainConfig, run_dir: Path,
                 seed: int, accelerator):
        self.backbone = backbone
        self.objective = objective
        self.dataset = dataset
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.effective_batch = cfg.batch_size * cfg.grad_accum * self.world
        self.start_step = 0
        self.skipped = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._log_file = None
        self._bar = None
        self._stop_signal: str | None = None
        self._previous_handlers: dict = {}
        self.ema = None  # TrainedEMA when train.ema
        self.validator = None  # Validator when train.validate_every (main process)
        self.tracking = None  # Tracking: train.report_to
        self._loader = None  # BatchLoader, made at the first batch (it starts at the first step trained)

    # ------------------------------------------------------------------ setup and teardown

    def setup(self, resume_from: Path | None = None) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        sources = {p.source for p in self.objective.predictions()}
        # Validation refused these already; a Trainer built in code has not been through it.
        self.backbone.check_sources(sources | set(self.objective.policies()))
        lr = cfg.effective_lr(self.world)
        self._speed_settings()
        self.params = list(self.backbone.trainable_parameters())
        if not self.params:
            raise PrefoptError("the backbone has no trainable parameters (check backbone.finetune)")
        optimizer = make_optimizer(cfg, self.params, lr)
        # The schedule is counted in optimizer steps and is stepped once per optimizer step.
        # accelerate's default (step_scheduler_with_optimizer=True) steps a prepared scheduler
        # num_processes times per call, for loops whose schedule is counted in one process's
        # dataloader batches (prepare() shortens each process's dataloader N-fold, and
        # split_batches=False keeps its batch size): on N processes our warmup would last 1/N
        # of its steps and linear / cosine would end after max_steps / N. make_accelerator()
        # turns that off; the scheduler is still prepared, so checkpoints carry it.
        if accelerator.step_scheduler_with_optimizer:
            raise PrefoptError("the accelerator must be made with step_scheduler_with_optimizer=False "
                               "(prefopt.accelerate_setup.make_accelerator)")
        scheduler = make_scheduler(cfg, optimizer)
        self._configure_deepspeed()
        if cfg.validate_every and self.sharded():
            # Validation samples on the main process alone; a sharded forward needs every process.
            raise PrefoptError("train.validate_every cannot sample a sharded student (FSDP, DeepSpeed ZeRO-3): "
                               "set it to 0 and evaluate final/ after the run")
        self.module, self.optimizer, self.scheduler = accelerator.prepare(
            self.backbone.trainable_module(), optimizer, scheduler)
        self.backbone.set_trainable_module(self.module)
        # The parameters as prepared: FSDP2 replaces them by sharded ones, which clipping must see.
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        # The objective's per-pair prompt changes (random-condition removal, prompt dropout), if any.
        rewrite = self.objective.prompt_rewrite({row["prompt"] for row in self.dataset.rows})
        self.step_fn = FusedStep(self.backbone, self.objective, cfg.reference_micro_batch,
                                 encode=self._text_encoder(rewrite), rewrite=rewrite)
        self.sampler = EpochSampler(len(self.dataset), self.seed)
        if cfg.ema:  # before resume: the checkpoint restores it
            from prefopt.engine.ema import TrainedEMA

            self.ema = TrainedEMA(self.params, cfg.ema_decay, accelerator)
        from prefopt.engine.validation import make_validator

        self.validator = make_validator(self)  # draws the reference now, before idle parts are released
        # Pairs are cached data (and prompts, with the text cache): what training leaves idle may go.
        self.backbone.release_idle(sources, cfg.text_cache)
        if resume_from is not None:
            self.resume(resume_from)
        if accelerator.is_main_process:
            _truncate_metrics(self.metrics_path, self.start_step)
            remove_leftovers(self.run_dir)
            # One handle for the whole run (main process only); each line is flushed as it is written.
            with file_errors(self.metrics_path, "open"):
                self._log_file = open(self.metrics_path, "a")
        from tqdm.auto import tqdm

        self._bar = tqdm(total=cfg.max_steps, initial=self.start_step, unit="step",
                         disable=not accelerator.is_main_process, desc="training")
        from prefopt.engine.tracking import start_tracking

        self.tracking = start_tracking(self, self.validator)
        self._install_signal_handlers()

    def _speed_settings(self) -> None:
        """train.channels_last and train.compile on the trained denoiser (in place: names and
        checkpoints unchanged; a LoRA reference is the same module, so it runs compiled too)."""
        from prefopt.engine.speed import compile_repeated_blocks, to_channels_last

        module = self.backbone.trainable_module()
        if self.cfg.channels_last:
            to_channels_last(module)
        if self.cfg.compile and not compile_repeated_blocks(module):
            log.warning("train.compile: the denoiser has no block prefopt knows to compile regionally")

    def _configure_deepspeed(self) -> None:
        """DeepSpeed takes the micro-batch and clipping from its config: fill its "auto" values from the recipe.

        (No dataloader goes through prepare(), so accelerate cannot infer the batch size.)
        """
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None:
            return
        config = plugin.deepspeed_config
        if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            config["train_micro_batch_size_per_gpu"] = self.cfg.batch_size
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = self.cfg.max_grad_norm or 0.0  # 0: DeepSpeed does not clip

    def _text_encoder(self, rewrite=None):
        """Prompt encoding for the step: a TextCache built now, or None (the backbone's encoder)."""
        if not self.cfg.text_cache:
            return None
        from prefopt.engine.text_cache import TextCache

        prompts = [text for row in self.dataset.rows for text in (row["prompt"], row["degraded"])]
        prompts += rewrite.texts() if rewrite is not None else []
        return TextCache.build(self.run_dir / "text_cache", self.backbone, prompts, self.cfg.batch_size * 4,
                               self.accelerator).encode

    def cleanup(self) -> None:
        """Close the progress bar (its line ends before any error is printed), the log, the signal
        handlers; let go of the optimizer state (accelerate holds it), before final/ is saved."""
        self._restore_signal_handlers()
        self.accelerator.free_memory()
        self.optimizer = self.scheduler = None
        if self._loader is not None:
            self._loader.close()
        if self.tracking is not None:
            self.tracking.finish()
        if self._bar is not None:
            self._bar.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        self.module.train()
        for step in range(self.start_step, self.cfg.max_steps):
            began = time.perf_counter()
            result = self.train_step(step)
            done = step + 1
            result.pairs_per_s = self.effective_batch / max(time.perf_counter() - began, 1e-9)
            if self.is_log_step(done):
                self.log_metrics(done, result)
            if self.validator is not None and done % self.cfg.validate_every == 0:
                self.validator(done)
            self._bar.update(1)
            if self.stop_requested():
                path = self.save_checkpoint(done)
                self._bar.close()
                raise RunStopped(f"stopped by {self._stop_signal or 'a signal to another process'} after step "
                                 f"{done}; checkpoint {path}; continue with --resume")
            if self.cfg.checkpoint_every and done % self.cfg.checkpoint_every == 0 and done < self.cfg.max_steps:
                self.save_checkpoint(done)
        if self.ema is not None:  # final/ and evaluation get the averaged weights
            self.ema.copy_to_params()
        self.gather_sharded_student()
        return TrainResult(skipped_steps=self.skipped)

    def sharded(self) -> bool:
        """Whether each process holds only a shard of the student's weights (FSDP, DeepSpeed ZeRO-3)."""
        from accelerate.utils import DistributedType

        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.FSDP:
            return True
        return (accelerator.distributed_type == DistributedType.DEEPSPEED
                and accelerator.state.deepspeed_plugin.zero_stage == 3)

    def gather_sharded_student(self) -> None:
        """Under FSDP or DeepSpeed ZeRO-3 gather the student's full weights (a collective: every
        process calls this) into a plain module on the main process, which saves final/ and evaluates."""
        if not self.sharded():
            return
        state = self.accelerator.get_state_dict(self.module)  # whole on the main process
        if self.accelerator.is_main_process:
            self.backbone.adopt_student_state(state)

    def train_step(self, step: int) -> StepResult:
        """One optimizer step (0-based ``step``); returns its metrics, still on the device."""
        sums, finite = self.accumulate(step)
        loss_ok = bool(finite)  # the one host sync of a step the non-finite policy needs
        # With more processes every one computes the norm (a collective under FSDP).
        grad_norm = (_grad_norm(self.accelerator, self.params, self.cfg.max_grad_norm)
                     if loss_ok or self.world > 1 else torch.tensor(float("nan")))
        if loss_ok and _finite(grad_norm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.step()
            self.scheduler.step()
        else:
            self.on_nonfinite(step, "loss" if not loss_ok else "gradient norm")
        self.optimizer.zero_grad(set_to_none=True)
        if not loss_ok:
            sums["loss"] = torch.full_like(sums["loss"], float("nan"))
        return StepResult(metrics=sums, loss_ok=loss_ok, grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0],
                          skipped_steps=self.skipped)

    def accumulate(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Forward/backward over the micro-steps of one optimizer step.

        Returns the mean metrics over the micro-steps whose loss was finite and
        whether every loss was finite, both on the device: nothing here waits
        for the accelerator.
        """
        cfg, accelerator = self.cfg, self.accelerator
        device = accelerator.device
        dtype = _metric_dtype(device)
        sums: dict[str, torch.Tensor] = {}
        all_finite = torch.ones((), dtype=torch.bool, device=device)
        for micro in range(cfg.grad_accum):
            batch = self.fetch_batch(step, micro)
            # accelerate's accumulate(): gradients are all-reduced on the last micro-step only (no_sync
            # before it), backward() divides the loss by grad_accum, DeepSpeed steps at the boundary.
            with accelerator.accumulate(self.module), accelerator.autocast():
                out = self.step_fn(batch, step_generator(self.seed, step, micro, self.rank), device,
                                   self.reduce_mean)
            loss = out.loss.detach()
            finite = torch.isfinite(loss).all()
            all_finite &= finite
            # Every micro-step runs its backward even after a non-finite loss: with more processes
            # each must join every gradient all-reduce, and the non-finite gradients it spreads make
            # every process skip (or stop) this step.
            accelerator.backward(out.loss)
            for key, value in {"loss": loss, **out.metrics}.items():
                value = torch.as_tensor(value, dtype=dtype, device=device) / cfg.grad_accum
                sums[key] = sums.get(key, 0.0) + torch.where(finite, value, torch.zeros_like(value))
        return sums, all_finite

    def fetch_batch(self, step: int, micro: int) -> PairBatch:
        """The pairs of one micro-step of one process: its own slice of the sampler's sequence,
        read ahead by the loader's workers (``train.loader_workers``) in that same order."""
        if self._loader is None:
            from prefopt.data.loader import BatchLoader

            self._loader = BatchLoader(self.dataset, self.sampler, batch_size=self.cfg.batch_size,
                                       grad_accum=self.cfg.grad_accum, rank=self.rank, world=self.world,
                                       start=step, max_steps=self.cfg.max_steps, workers=self.cfg.loader_workers,
                                       prefetch=self.cfg.loader_prefetch)
        return PairBatch(*self._loader.batch(step, micro))

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over all processes (what objectives use for batch statistics such as KTO's KL)."""
        return self.accelerator.reduce(x.detach().clone(), reduction="mean") if self.world > 1 else x

    # ------------------------------------------------------------------ policies

    def on_nonfinite(self, step: int, what: str) -> None:
        """A NaN/inf loss or gradient norm: stop with the last good checkpoint named, or skip the step."""
        if self.cfg.on_nonfinite == "stop":
            good = list_checkpoints(self.run_dir)
            kept = f"last good checkpoint: {good[-1]}" if good else "no checkpoint was written yet"
            # Steps are counted from 1 here, as in metrics.jsonl and the checkpoint names.
            raise PrefoptError(f"non-finite {what} at step {step + 1}; stopping ({kept})")
        self.skipped += 1
        log.warning("non-finite %s at step %d: step skipped (%d so far)", what, step + 1, self.skipped)

    # ------------------------------------------------------------------ logging

    def is_log_step(self, done: int) -> bool:
        return done % self.cfg.log_every == 0 or done == self.cfg.max_steps

    def log_metrics(self, done: int, result: StepResult) -> None:
        """Bring a step's metrics to the host (the mean over processes) and write them (main process).

        Every process calls this on the same steps: the mean is a collective.
        """
        metrics = self._mean_over_processes(result.metrics, result.loss_ok)
        metrics.update({
            "step": done,
            "grad_norm": float(result.grad_norm),
            "lr": result.lr,
            "skipped_steps": result.skipped_steps,
            "perf/pairs_per_s": result.pairs_per_s,
        })
        if not self.accelerator.is_main_process:
            return
        with file_errors(self.metrics_path, "append to"):  # a full disk: one line naming the log
            self._log_file.write(json.dumps(metrics) + "\n")
            self._log_file.flush()
        self.tracking.log(metrics, done)
        shown = {"loss": f"{metrics['loss']:.4f}"}
        if "pref/accuracy" in metrics:
            shown["acc"] = f"{metrics['pref/accuracy']:.2f}"
        self._bar.set_postfix(shown)

    def _mean_over_processes(self, sums: dict[str, torch.Tensor], loss_ok: bool) -> dict[str, float]:
        """Logged metrics as the mean over all processes' batches, not process 0's alone.

        Only when every process had a finite loss; otherwise this process's own.
        All processes hold the same keys (one objective), so the collective lines up.
        """
        keys = sorted(sums)
        values = torch.stack([sums[k].reshape(()) for k in keys])
        if self.world > 1:
            ok = torch.tensor([float(loss_ok)], dtype=values.dtype, device=values.device)
            mean = self.accelerator.reduce(torch.cat([ok, values]), reduction="mean")
            if mean[0].item() == 1.0:
                values = mean[1:]
        return dict(zip(keys, values.tolist()))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, done: int) -> Path:
        return save_checkpoint(self.accelerator, self.run_dir, done, {"skipped_steps": self.skipped},
                               self.cfg.keep_checkpoints)

    def resume(self, path: Path) -> None:
        """Model, optimizer, scheduler and RNG states from a checkpoint; the loop continues after its step."""
        state = load_checkpoint(self.accelerator, path)
        self.start_step, self.skipped = state["step"], state.get("skipped_steps", 0)
        log.info("resumed from %s at step %d", path, self.start_step)

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT become a request to stop after the current step."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def stop_requested(self) -> bool:
        """Whether a signal reached any process; all processes stop after the same step."""
        stopping = self._stop_signal is not None
        if self.world > 1:  # or the checkpoint's barrier hangs
            flag = torch.tensor([float(stopping)], device=self.accelerator.device)
            stopping = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return stopping


def train(*, backbone: Backbone, objective: Objective, dataset, cfg: TrainConfig, run_dir: Path, seed: int,
          accelerator, resume_from: Path | None = None) -> TrainResult:
    """Set up a Trainer, run it, clean up."""
    trainer = Trainer(backbone=backbone, objective=objective, dataset=dataset, cfg=cfg, run_dir=run_dir, seed=seed,
                      accelerator=accelerator)
    try:
        trainer.setup(resume_from)
        return trainer.train()
    finally:
        trainer.cleanup()


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
    with file_errors(path, "read"):
        lines = path.read_bytes().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line.decode("utf-8"))
            if row["step"] <= start:
                kept.append(line.decode("utf-8"))
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # the last line, cut short by a kill or a full disk
                continue
            raise PrefoptError(f"{path}: line {number} is damaged (not a metrics row); "
                               "delete the line or the file to resume") from None
    # Atomic, so a kill now cannot lose the lines of the steps already done.
    with file_errors(path, "write"):
        write_atomic(path, "".join(line + "\n" for line in kept).encode())
