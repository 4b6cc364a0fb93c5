"""Experiment trackers (TensorBoard, W&B, trackio, MLflow) through accelerate's tracker classes.

metrics.jsonl stays the record a resume trusts; trackers get the same rows,
the resolved recipe as the run's config, and validation grids. Only the main
process talks to them. A resumed run continues the same tracker run where the
tracker can: TensorBoard writes into the same directory and drops what was
logged after the checkpoint (``purge_step``); W&B, trackio and MLflow reopen
the run whose id ``trackers.json`` in the run directory recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.atomic import write_atomic
from prefopt.checksums import read_json
from prefopt.errors import PrefoptError, require
from prefopt.rundir import flatten

# tracker name -> (the module it needs, the prefopt extra that installs it)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
    "mlflow": ("mlflow", "mlflow"),
}
PROJECT = "prefopt"  # W&B / trackio project and MLflow experiment of every run
RECORD = "trackers.json"  # the tracker run ids a resume reopens
TENSORBOARD_DIR = "tensorboard"


def flat_config(data: Any) -> dict[str, Any]:
    """A nested recipe as dotted keys with scalar values (TensorBoard's hparams take nothing else): lists as JSON."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple)) else value
            for key, value in flatten(data).items()}


def check_installed(names) -> None:
    """Fail with the usual one line before training when a tracker's package is missing."""
    for name in names:
        module, extra = PACKAGES[name]
        require(module, extra)


class Tracking:
    """The trackers of one training stage (empty on processes other than the main one)."""

    def __init__(self, names, run_dir: Path, config: dict[str, Any], start_step: int, is_main_process: bool):
        self.trackers: list = []
        self.run_dir = Path(run_dir)
        if not names or not is_main_process:
            return
        check_installed(names)
        record_path = self.run_dir / RECORD
        resuming = start_step > 0
        ids = read_json(record_path, "tracker record") if resuming and record_path.is_file() else {}
        if not isinstance(ids, dict):
            raise PrefoptError(f"tracker record {record_path} is damaged (not an object); delete it to start "
                               "new tracker runs")
        for name in names:
            tracker = self._make(name, start_step, ids.get(name))
            try:
                tracker.start()
            except Exception as exc:  # noqa: BLE001 - a tracker's own failure (no login, a bad URI): one line
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise PrefoptError(f"train.report_to: {name} could not start: {reason}") from exc
            if not resuming or name not in ids:
                tracker.store_init_configuration(flat_config(config))
            ids[name] = self._run_id(name, tracker)
            self.trackers.append(tracker)
        write_atomic(record_path, (json.dumps(ids, indent=1) + "\n").encode())

    def _make(self, name: str, start_step: int, run_id: str | None):
        from accelerate import tracking

        run_name = self.run_dir.resolve().name
        if name == "tensorboard":
            # purge_step: events at or after it, from a run that went past its last checkpoint, are dropped.
            purge = {"purge_step": start_step + 1} if start_step else {}
            return tracking.TensorBoardTracker(TENSORBOARD_DIR, self.run_dir, **purge)
        if name == "wandb":
            resume = {"id": run_id, "resume": "allow"} if run_id else {}
            return tracking.WandBTracker(PROJECT, name=run_name, dir=str(self.run_dir), **resume)
        if name == "trackio":
            return tracking.TrackioTracker(PROJECT, name=run_id or run_name, resume="allow")
        import os

        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ:  # a user's server wins; else a store in the run directory
            # SQLite: MLflow refuses new file stores (./mlruns) since 3.x.
            mlflow.set_tracking_uri(f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")
        artifacts = (self.run_dir / "mlruns").resolve().as_uri()
        return tracking.MLflowTracker(PROJECT, logging_dir=artifacts, run_id=run_id, run_name=run_name)

    @staticmethod
    def _run_id(name: str, tracker) -> str | None:
        if name == "wandb":
            return tracker.run.id
        if name == "trackio":
            return getattr(tracker.run, "name", None)
        if name == "mlflow":
            return tracker.active_run.info.run_id
        return None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        values = {key: value for key, value in metrics.items() if key != "step"}
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_images(self, images: dict[str, "Any"], step: int) -> None:
        """Images (HWC uint8 arrays) under their tags, to the trackers that take images."""
        import numpy as np

        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({k: np.stack(v) for k, v in images.items()}, step=step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images(images, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def run_config(run_dir: Path, cfg) -> dict[str, Any]:
    """The resolved recipe of the run (a pretraining stage's is its parent run's), else the train settings."""
    from prefopt.rundir import RESOLVED, read_resolved

    for directory in (Path(run_dir), Path(run_dir).parent):
        if (directory / RESOLVED).is_file():
            return read_resolved(directory)
    return {"train": cfg.model_dump(mode="json")}


def start_tracking(trainer, validator=None) -> Tracking:
    """The trainer's trackers; a new run's also get the reference's validation grid at step 0."""
    tracking = Tracking(trainer.cfg.report_to, trainer.run_dir, run_config(trainer.run_dir, trainer.cfg),
                        trainer.start_step, trainer.accelerator.is_main_process)
    if validator is not None:
        validator.tracking = tracking
        if trainer.start_step == 0:
            validator.log_reference()
    return tracking
