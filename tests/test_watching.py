"""Watching a run: trackers (TensorBoard read back), validation samples and EMA, none of which may
change what training computes (tested bitwise on the toy), all resumable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import FINAL, assert_same_weights, cli, error_lines, metric_rows, write_toy_recipe

pytest.importorskip("tensorboard")

WATCHED = {"report_to": "tensorboard", "validate_every": 10, "validation_samples": 3}


def _run(base, **train):
    # No pretraining stage: a randomly initialised reference serves these comparisons and is faster.
    code, err = cli("run", write_toy_recipe(base, pretrain=False, train=train))
    assert code == 0, err
    return base / "run"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """WATCHED, and the recipe's toy evaluator scoring each validation."""
    base = tmp_path_factory.mktemp("watched")
    recipe = write_toy_recipe(base, pretrain=False, train={**WATCHED, "validation_eval": ["toy2d_modes"]},
                              eval=[{"name": "toy2d_modes", "samples_per_condition": 10}])
    code, err = cli("run", recipe)
    assert code == 0, err
    return base / "run"


@pytest.fixture(scope="module")
def with_ema(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ema"), **WATCHED, ema=True, ema_decay=0.9)


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "perf/pairs_per_s"} for row in rows]


def test_tracking_and_validation_leave_training_bitwise_unchanged(plain, watched):
    assert_same_weights(plain / FINAL, watched / FINAL)
    assert _without_timing(metric_rows(plain)) == _without_timing(metric_rows(watched))


def test_tensorboard_holds_the_metrics_and_validation_images(watched):
    events = _events(watched)
    rows = metric_rows(watched)
    for key in ("loss", "pref/accuracy", "pref/margin", "mse/student_w", "mse/ref_l", "grad_norm", "lr"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [row["step"] for row in rows]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in rows], rel=1e-6)
    assert [e.step for e in events.Images("validation/student")] == [10, 20, 30, 40]
    assert [e.step for e in events.Images("validation/reference")] == [0]
    assert [e.step for e in events.Scalars("validation/toy/mode_accuracy")] == [10, 20, 30, 40]
    assert "objective.beta" in (watched / "tensorboard").rglob("hparams.yml").__next__().read_text()


def test_validation_directories(watched):
    from PIL import Image

    steps = sorted(p.name for p in (watched / "validation").iterdir())
    assert steps == ["reference", "step-00000010", "step-00000020", "step-00000030", "step-00000040"]
    record = json.loads((watched / "validation" / "step-00000020" / "samples.json").read_text())
    assert record["step"] == 20 and record["seeds"] == [0, 1, 2] and len(record["prompts"]) == 4
    assert 0 <= record["scores"]["validation/toy/mode_accuracy"] <= 1  # the recipe's evaluator, named for it
    assert (watched / "validation" / "step-00000020" / "samples.png").is_file()  # and the files it writes
    with Image.open(watched / "validation" / "step-00000020" / "grid.png") as grid:
        assert grid.size[0] > 100 and grid.size[1] > 100


def test_ema_weights_go_to_final_and_resume_bitwise(with_ema, plain, tmp_path):
    from safetensors.torch import load_file

    averaged, last = load_file(str(with_ema / FINAL)), load_file(str(plain / FINAL))
    assert any(not torch.equal(averaged[k], last[k]) for k in last)  # final/ holds the averaged weights

    run = tmp_path / "run"
    shutil.copytree(with_ema, run)
    recipe = write_toy_recipe(tmp_path, run, pretrain=False, train={**WATCHED, "ema": True, "ema_decay": 0.9})
    (run / FINAL).unlink()
    code, err = cli("run", recipe, "--resume", "--checkpoint", "step-00000020")
    assert code == 0, err
    assert_same_weights(with_ema / FINAL, run / FINAL)  # the EMA came back from the checkpoint exactly
    # The tracker run continues: every step once, the old events after the checkpoint purged.
    events = _events(run)
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 41))
    assert [e.step for e in events.Images("validation/student")] == [10, 20, 30, 40]
    assert [e.step for e in events.Images("validation/reference")] == [0]


def test_ema_swaps_back_exactly():
    from accelerate import Accelerator

    from prefopt.engine.ema import TrainedEMA

    param = torch.nn.Parameter(torch.zeros(3))
    ema = TrainedEMA([param], decay=0.5, accelerator=Accelerator(cpu=True))
    with torch.no_grad():
        param.add_(1.0)
    ema.step()  # diffusers' decay at its first step is 0: the average is the weights, 1
    with torch.no_grad():
        param.add_(1.0)
    ema.step()  # then min(0.5, (1 + 1) / (10 + 1)) = 2/11: 1 + (9/11)(2 - 1)
    with ema.in_place():
        assert torch.allclose(param, torch.full((3,), 1 + 9 / 11))
    assert torch.equal(param, torch.full((3,), 2.0))


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as without the package
    code, err = cli("run", write_toy_recipe(tmp_path, train={"report_to": ["tensorboard", "wandb"]}))
    assert code == 2
    assert error_lines(err) == ["error: this recipe needs the optional package 'wandb': pip install 'prefopt[wandb]'"]


@pytest.mark.slow
def test_shipped_toy_recipe_watched_equals_unwatched(tmp_path):
    """The issue's check: the toy recipe with TensorBoard and validation every 100 steps writes events with
    the metrics and validation images, and ends with the weights of the same run without them."""
    recipe = "recipes/toy2d_ddspo.yaml"
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    code, err = cli("run", recipe, f"output_dir={plain}")
    assert code == 0, err
    code, err = cli("run", recipe, f"output_dir={watched}", "train.report_to=tensorboard", "train.validate_every=100")
    assert code == 0, err
    assert_same_weights(plain / FINAL, watched / FINAL)
    events = _events(watched)
    assert [e.step for e in events.Scalars("pref/accuracy")] == [row["step"] for row in metric_rows(watched)]
    assert [e.step for e in events.Images("validation/student")] == [100, 200, 300, 400]


@pytest.mark.slow
def test_wandb_offline_run_is_continued_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train = {"report_to": ["wandb"], "validate_every": 20}
    run = _run(tmp_path / "first", **train)
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    (first,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    history = (first / f"run-{run_id}.wandb").read_bytes()
    assert b"pref/accuracy" in history and b"mse/student_w" in history
    images = sorted(p.name.split("_")[0] for p in (first / "files" / "media" / "images" / "validation").iterdir())
    assert images == ["reference", "student", "student"]  # steps 0, 20 and 40

    (run / FINAL).unlink()
    code, err = cli("run", write_toy_recipe(tmp_path / "first", run, pretrain=False, train=train), "--resume",
                    "--checkpoint", "step-00000020")
    assert code == 0, err
    assert json.loads((run / "trackers.json").read_text())["wandb"] == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # the same run id, continued


@pytest.mark.slow
def test_two_processes_watched_equal_unwatched(tmp_path):
    """Under `accelerate launch` (2 processes, gloo), only the main process validates and writes events,
    the other waits at the next collective, and the weights are those of the unwatched 2-process run."""
    import subprocess

    from helpers import ENV, two_process_launch

    boot = tmp_path / "boot.py"
    boot.write_text("import sys\nsys.argv = ['prefopt'] + sys.argv[1:]\nfrom prefopt.cli import main\nmain()\n")
    runs = {}
    for name, train in (("plain", {}), ("watched", {"report_to": "tensorboard", "validate_every": 3})):
        recipe = write_toy_recipe(tmp_path / name, train={"max_steps": 6, "checkpoint_every": 3, **train})
        done = subprocess.run(two_process_launch(str(boot), "run", str(recipe)), env=ENV, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = tmp_path / name / "run"
    assert_same_weights(runs["plain"] / FINAL, runs["watched"] / FINAL)
    events = _events(runs["watched"])
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))
    assert [e.step for e in events.Images("validation/student")] == [3, 6]
    assert len(list((runs["watched"] / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer


def test_validation_grid_of_an_image_backbone(tiny_sd, tmp_path):
    """A diffusers backbone's validation: decoded images in a row per prompt, RNG states untouched."""
    import random

    import numpy as np
    from PIL import Image
    from tiny_models import load_backbone

    from prefopt.engine.validation import Validator
    from prefopt_backbones.sd import SDBackbone

    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    backbone.trainable_module().train()  # as the trainer has it
    validator = Validator(backbone, tmp_path, ["a photo of a cat", "a red car"], samples_per_prompt=2, seed=5)
    torch.manual_seed(123)
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    validator.reference()
    validator(7)
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    assert backbone.trainable_module().training  # back in training mode
    for name in ("reference", "step-00000007"):
        record = json.loads((tmp_path / "validation" / name / "samples.json").read_text())
        assert record["prompts"] == ["a photo of a cat", "a red car"] and record["seeds"] == [5, 6]
        with Image.open(tmp_path / "validation" / name / "grid.png") as grid:
            assert grid.mode == "RGB" and grid.size[1] > grid.size[0] / 2  # two rows of two images


@pytest.mark.slow
def test_mlflow_run_in_the_run_directory_is_continued_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train = {"report_to": "mlflow"}
    run = _run(tmp_path / "first", **train)
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    history = client.get_metric_history(run_id, "pref/accuracy")
    assert sorted(m.step for m in history) == [row["step"] for row in metric_rows(run)]
    assert client.get_run(run_id).data.params["objective.beta"] == "2000.0"  # the recipe as the run's config

    (run / FINAL).unlink()
    code, err = cli("run", write_toy_recipe(tmp_path / "first", run, pretrain=False, train=train), "--resume",
                    "--checkpoint", "step-00000020")
    assert code == 0, err
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert max(steps) == 40 and steps.count(30) == 2  # the same run, steps after the checkpoint logged again
