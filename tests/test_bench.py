"""``prefopt bench``'s two steps agree, and its rows go where the user says.

The naive step (prefopt/engine/naive_step.py) makes the predictions as the
official DDSPO code does (4 reference rows per pair in two calls, the text
encoder on c and c- separately); it must give the fused step's loss and
gradients, or the bench compares two different computations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import load_backbone, objective, pair_batch

from prefopt.engine.naive_step import NaiveStep, naive_step_applies
from prefopt.engine.step import FusedStep, PairBatch
from prefopt_backbones.sd import SDBackbone


def _loss_and_grads(step, backbone, batch):
    params = [p for p in backbone.trainable_parameters()]
    for p in params:
        p.grad = None
    out = step(batch, torch.Generator().manual_seed(3), torch.device("cpu"))
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fused_and_naive_steps_give_the_same_loss_and_gradients(tiny_sd, mode):
    backbone = load_backbone(SDBackbone, tiny_sd, mode, finetune={"init": "gaussian"} if mode == "lora" else {})
    backbone.set_trainable_module(backbone.trainable_module())
    if mode == "full":  # a student that differs from its reference, so the loss is not at its starting value
        with torch.no_grad():
            for p in backbone.trainable_parameters():
                p.add_(0.01 * torch.randn_like(p))
    base = pair_batch(backbone)
    # Repeated prompts: the fused step encodes each once, the naive one every row.
    batch = PairBatch(base.x0_w, base.x0_l, [base.prompts[0], *base.prompts[1:-1], base.prompts[0]], base.degraded)
    ddspo = objective("ddspo")
    fused_loss, fused_grads = _loss_and_grads(FusedStep(backbone, ddspo), backbone, batch)
    naive_loss, naive_grads = _loss_and_grads(NaiveStep(backbone, ddspo), backbone, batch)
    assert torch.isfinite(fused_loss) and fused_loss.item() != 0
    torch.testing.assert_close(naive_loss, fused_loss, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in fused_grads)
    for naive, fused in zip(naive_grads, fused_grads):
        torch.testing.assert_close(naive, fused, rtol=1e-4, atol=1e-7)


def test_naive_step_counts_official_calls(tiny_sd, monkeypatch):
    """4 reference rows per pair in two no-grad calls, 2 student rows in one, text encoded twice."""
    from diffusers import UNet2DConditionModel

    calls = []
    forward = UNet2DConditionModel.forward

    def record(self, sample, *args, **kwargs):
        calls.append((sample.shape[0], torch.is_grad_enabled()))
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", record)
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    backbone.set_trainable_module(backbone.trainable_module())
    encoded = []
    encode = backbone.encode_prompts
    monkeypatch.setattr(backbone, "encode_prompts", lambda texts: encoded.append(len(texts)) or encode(texts))
    batch = pair_batch(backbone)
    n = len(batch)
    NaiveStep(backbone, objective("ddspo"))(batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert calls == [(2 * n, False), (2 * n, True), (2 * n, False)]
    assert encoded == [n, n]


def test_naive_step_refuses_objectives_it_cannot_reproduce():
    assert naive_step_applies(objective("ddspo"))
    assert naive_step_applies(objective("diffusion_dpo"))
    assert not naive_step_applies(objective("ddspo", winner_policy="/w", loser_policy="/l"))


@pytest.mark.slow  # ~45 s on a loaded 2-core machine
def test_bench_times_the_recipe_step_and_writes_only_where_asked(tiny_sd, tmp_path, monkeypatch):
    """The trainer's step on the recipe's prompts, both kinds timed; rows in <output_dir>/bench.md by default."""
    from prefopt.bench import run_bench
    from prefopt.engine.trainer import Trainer
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car on the tree\na big dog in the house\na small cat under the sky\n")
    seen_prompts, steps_taken = set(), []
    fetch, train_step = Trainer.fetch_batch, Trainer.train_step

    def fetch_and_record(self, *args):
        batch = fetch(self, *args)
        seen_prompts.update(batch.prompts)
        return batch

    monkeypatch.setattr(Trainer, "fetch_batch", fetch_and_record)
    monkeypatch.setattr(Trainer, "train_step", lambda self, step: steps_taken.append(step) or train_step(self, step))
    monkeypatch.chdir(tmp_path)  # a checkout's docs/ would be here: nothing may appear
    registry = PluginRegistry()
    overrides = [f"backbone.pretrained={tiny_sd}", "backbone.resolution=16", "backbone.finetune.mode=lora",
                 "backbone.num_inference_steps=1", f"pairs.prompts.path={prompts}", "pairs.sample_batch_size=2",
                 "train.batch_size=2", "train.grad_accum=2", "train.mixed_precision=no", "train.report_to=[]",
                 "train.loader_workers=0", f"output_dir={tmp_path / 'run'}"]
    resolved = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "sd14_ddspo.yaml", registry, overrides)
    result = run_bench(resolved, registry, steps=1, output=None, overrides=overrides)
    assert set(result["steps"]) == {"fused", "naive"}
    # The naive step makes 4 reference rows per pair where the fused one makes 3: more FLOPs per pair.
    assert result["steps"]["naive"]["flops_per_pair"] > result["steps"]["fused"]["flops_per_pair"] > 0
    assert result["generation"]["images_per_s"] > 0
    # The recipe's prompts, through Trainer.train_step: warm-up + FLOP count per kind, then one of each timed.
    assert seen_prompts and seen_prompts <= {line for line in prompts.read_text().splitlines()}
    assert steps_taken == list(range(6))
    table = (tmp_path / "run" / "bench.md").read_text()
    assert table.count("| sd14_ddspo") == 0 and "| fused |" in table and "| naive |" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["bench.md"]


@pytest.mark.parametrize("data", [False, True])
def test_a_rows_file_that_cannot_take_rows_is_refused_before_any_timing(tmp_path, monkeypatch, data):
    """A non-UTF-8 --output (or --steps below the minimum) is one error before the model is loaded."""
    from prefopt import accelerate_setup
    from prefopt.bench import run_bench
    from prefopt.data.bench import run_data_bench
    from prefopt.errors import PrefoptError
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    monkeypatch.setattr(accelerate_setup, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    registry = PluginRegistry()
    resolved = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "toy2d_ddspo.yaml", registry,
                           [f"output_dir={tmp_path / 'run'}"])
    garbage = tmp_path / "rows.md"
    garbage.write_bytes(b"# rows\n\xff\xfe not utf-8\n")
    bench = ((lambda **k: run_data_bench(resolved, registry, pairs=10, data_dir=None, **k)) if data
             else (lambda **k: run_bench(resolved, registry, **k)))
    with pytest.raises(PrefoptError, match=r"rows.md is not UTF-8 text \(byte 7\)"):
        bench(steps=1, output=garbage)
    with pytest.raises(PrefoptError, match="is not a file"):
        bench(steps=1, output=tmp_path)
    with pytest.raises(PrefoptError, match="--steps must be"):
        bench(steps=-3, output=None)
    assert garbage.read_bytes() == b"# rows\n\xff\xfe not utf-8\n"


def test_a_rows_file_in_a_read_only_folder_is_refused_before_any_timing(tmp_path, monkeypatch):
    """The rows are renamed into the file's folder: one that takes no new files (read-only, no permission,
    checked through os.access, which root's tests must stand in for) is refused before the model is loaded."""
    import os

    from prefopt import accelerate_setup
    from prefopt.bench import run_bench
    from prefopt.errors import PrefoptError
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    monkeypatch.setattr(accelerate_setup, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: Path(path) != locked and access(path, mode, **k))
    registry = PluginRegistry()
    resolved = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "toy2d_ddspo.yaml", registry,
                           [f"output_dir={tmp_path / 'run'}"])
    for output in (locked / "bench.md", locked / "new" / "folders" / "bench.md"):
        with pytest.raises(PrefoptError, match=f"{locked} is not a writable folder"):
            run_bench(resolved, registry, steps=1, output=output)
    assert list(locked.iterdir()) == []


def test_a_bench_row_stays_one_row_whatever_an_override_holds(tmp_path):
    """An override with a newline or `|` (or a machine name with them) stays inside its cell: one row per step
    kind, 14 cells each, and no forged line."""
    import re

    from prefopt.bench import HEADER, _append

    step = {"step_s": 0.01, "pairs_per_s": 100.0, "peak_mib": 10.0, "flops_per_pair": 1e9, "mfu": None}
    result = {"recipe": "toy.yaml train.log_every=10\n| forged | row |\r\x1b[2J a\\|b\u2028c", "batch": "2x1",
              "precision": "no", "machine": "CPU | x1\nfake", "repetitions": 1,
              "steps": {"fused": step, "naive": step}, "ratio": 1.0, "memory_ratio": 1.0}
    output = tmp_path / "bench.md"
    _append(output, result)
    _append(output, result)
    text = output.read_text()
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    rows = text.split(HEADER)[1].splitlines()
    assert len(rows) == 4 and not any(row.startswith("| forged") for row in text.splitlines())
    for row, kind in zip(rows, ["fused", "naive"] * 2):
        cells = [cell.strip() for cell in re.findall(r"((?:\\.|[^\\|])*)\|", row)[1:]]
        assert len(cells) == 14 and cells[4] == kind, row
        assert cells[1] == r"toy.yaml train.log_every=10 \| forged \| row \|  [2J a\\\|b c"
