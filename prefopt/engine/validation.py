"""Validation during training: fixed prompts and seeds sampled from the student every N steps.

``validation/step-NNNNNNNN/`` holds ``grid.png`` (the samples with their
prompts) and ``samples.json`` (prompts, seeds, and the scores of the
evaluators named for validation); ``validation/reference/`` the same drawn once
from the reference, for comparison. Each directory is written to a temporary
name and renamed, so a resumed run rewrites any step it repeats and never reads
a half-written one.

Validation must not change training: it runs with every global RNG state saved
and restored (sampling itself uses per-row seeded generators), the student in
eval mode and without grad, and only on the main process; training's draws come
from per-step generators that nothing here touches (tested bitwise).
"""

from __future__ import annotations

import io
import json
import random
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from prefopt.atomic import replace_dir
from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT, Backbone
from prefopt.rundir import remove

DIRECTORY = "validation"
REFERENCE_DIR = "reference"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / DIRECTORY / f"step-{step:08d}"


@contextmanager
def rng_preserved():
    """Every global RNG (python, numpy, torch CPU and CUDA) as it was, afterwards."""
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


def render_grid(backbone: Backbone, prompts: Sequence[str], x0: torch.Tensor, per_prompt: int, title: str):
    """One PIL image: a row of decoded samples per prompt, or for 2-D point data a scatter per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    try:
        images = backbone.decode(x0)
    except PrefoptError:  # no images (the toy's points): plot the samples themselves
        images = None
    if images is None and not (x0.dim() == 2 and x0.shape[1] == 2):
        raise PrefoptError(f"validation: the {backbone.name} backbone's samples are neither images nor 2-D points")
    rows = len(prompts)
    if images is not None:
        from prefopt.figures import grid_png

        png = grid_png([images[i * per_prompt:(i + 1) * per_prompt] for i in range(rows)],
                       row_labels=[textwrap.fill(prompt[:60], 20) for prompt in prompts], title=title)
        return Image.open(io.BytesIO(png)).convert("RGB")
    fig, axes = plt.subplots(1, rows, figsize=(2.2 * rows, 2.4), squeeze=False)
    points = x0.detach().float().cpu().numpy()
    lim = float(np.abs(points).max()) * 1.1 + 1e-6
    for i, prompt in enumerate(prompts):
        chunk = points[i * per_prompt:(i + 1) * per_prompt]
        axes[0][i].scatter(chunk[:, 0], chunk[:, 1], s=4)
        axes[0][i].set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
        axes[0][i].set_title(prompt[:40], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    grid = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return grid


class Validator:
    """Draws, saves and logs the validation samples of one training stage (main process only)."""

    def __init__(self, backbone: Backbone, run_dir: Path, prompts: Sequence[str], samples_per_prompt: int,
                 seed: int, tracking=None, evaluators: Sequence[tuple[str, object]] = (),
                 swap_weights: Callable | None = None):
        if not prompts:
            raise PrefoptError("train.validate_every: there are no prompts to validate with")
        self.backbone = backbone
        self.run_dir = Path(run_dir)
        self.prompts = list(prompts)
        self.per_prompt = samples_per_prompt
        # The same seeds for every prompt, every step and the reference: only the weights differ.
        self.seeds = [seed + j for j in range(samples_per_prompt)]
        self.tracking = tracking
        self.evaluators = list(evaluators)
        self.swap_weights = swap_weights  # a context that puts the weights to validate in place (EMA)

    def _draw(self, source: str, directory: Path, title: str, step: int | None) -> dict:
        prompts = [p for p in self.prompts for _ in range(self.per_prompt)]
        seeds = self.seeds * len(self.prompts)
        with torch.no_grad():
            x0 = self.backbone.sample(prompts, seeds, source=source)
        grid = render_grid(self.backbone, self.prompts, x0, self.per_prompt, title)
        tmp = directory.with_name(f".{directory.name}.tmp")
        remove(tmp)  # a leftover of a killed run, or a planted link (removed as a link, never followed)
        tmp.mkdir(parents=True)
        scores: dict[str, float] = {}
        for name, evaluator in self.evaluators if source == STUDENT else ():
            for key, value in evaluator.evaluate(self.backbone, str(tmp), 0).items():
                scores[f"validation/{key}"] = float(value)
        grid.save(tmp / "grid.png")
        record = {"step": step, "source": source, "prompts": self.prompts, "seeds": self.seeds, "scores": scores}
        (tmp / "samples.json").write_text(json.dumps(record, indent=1) + "\n")
        replace_dir(tmp, directory)
        if self.tracking is not None and source == STUDENT:
            self.tracking.log_images({"validation/student": [np.asarray(grid)]}, step=step)
            if scores:
                self.tracking.log(scores, step=step)
        return scores

    def reference(self) -> None:
        """The reference's samples, once per run (kept across resumes)."""
        directory = self.run_dir / DIRECTORY / REFERENCE_DIR
        if (directory / "grid.png").is_file():
            return
        with rng_preserved():
            self._draw(REFERENCE, directory, "reference", None)

    def log_reference(self) -> None:
        """The reference's grid to the trackers (at step 0)."""
        from PIL import Image

        grid = self.run_dir / DIRECTORY / REFERENCE_DIR / "grid.png"
        if self.tracking is not None and grid.is_file():
            with Image.open(grid) as image:
                self.tracking.log_images({"validation/reference": [np.asarray(image.convert("RGB"))]}, step=0)

    def __call__(self, step: int) -> dict:
        """Validate the student after optimizer step ``step``; returns the evaluators' scores."""
        module = self.backbone.trainable_module()
        was_training = module.training
        swap = self.swap_weights() if self.swap_weights is not None else _nothing()
        try:
            with rng_preserved(), swap:
                return self._draw(STUDENT, step_dir(self.run_dir, step), f"student, step {step}", step)
        finally:
            module.train(was_training)


@contextmanager
def _nothing():
    yield


def make_validator(trainer) -> Validator | None:
    """The trainer's Validator (main process, ``validate_every`` set), with the reference drawn once.

    The reference is drawn here, before training may release what sampling needs.
    """
    cfg = trainer.cfg
    if not cfg.validate_every or not trainer.accelerator.is_main_process:
        return None
    prompts = list(cfg.validation_prompts) or list(dict.fromkeys(row["prompt"] for row in trainer.dataset.rows))[:4]
    ema = getattr(trainer, "ema", None)
    validator = Validator(trainer.backbone, trainer.run_dir, prompts, cfg.validation_samples, cfg.validation_seed,
                          evaluators=recipe_evaluators(trainer.run_dir, cfg.validation_eval),
                          swap_weights=ema.in_place if ema is not None else None)
    validator.reference()
    return validator


def recipe_evaluators(run_dir: Path, names: Sequence[str]) -> list[tuple[str, object]]:
    """The evaluators of the run's recipe (``eval``) whose names ``train.validation_eval`` lists."""
    if not names:
        return []
    from prefopt.recipe import resolve
    from prefopt.registry import PluginRegistry
    from prefopt.rundir import RESOLVED, read_resolved

    path = Path(run_dir) / RESOLVED
    if not path.is_file():
        raise PrefoptError(f"train.validation_eval: {run_dir} has no {RESOLVED} to take the evaluators from")
    registry = PluginRegistry()
    resolved = resolve(read_resolved(Path(run_dir)), registry, where=str(path))
    present = [component.name for component in resolved.recipe.eval]
    missing = sorted(set(names) - set(present))
    if missing:
        raise PrefoptError(f"train.validation_eval names {missing[0]!r}, which is not in the recipe's eval list "
                           f"({', '.join(present) or 'empty'})")
    return [(component.name, registry.get("evaluator", component.name)(resolved.config("eval", i)))
            for i, component in enumerate(resolved.recipe.eval) if component.name in names]
