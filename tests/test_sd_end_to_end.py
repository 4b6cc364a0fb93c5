"""`prefopt run` on a tiny SD pipeline: prompts -> random-removal pairs -> DDSPO -> final/ -> diffusers.

The same command path a user runs with a hub id, with a local directory in its
place: prompt file, pair build by the backbone's sampler, fused training,
saving, and loading the result into StableDiffusionPipeline.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import cli, metric_rows
from tiny_models import SD_RESOLUTION

from prefopt.stages import run_recipe
from prefopt.recipe import load_recipe
from prefopt.registry import PluginRegistry


def write_recipe(tmp_path, pretrained, mode):
    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog sitting under a tree\n")
    recipe = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd", "pretrained": str(pretrained), "finetune": {"mode": mode, "rank": 4},
                     "resolution": SD_RESOLUTION, "num_inference_steps": 2},
        "pairs": {"source": {"name": "random_removal", "variants": 1},
                  "prompts": {"path": "prompts.txt", "min_words": 2}, "shard_size": 2},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_run_builds_pairs_trains_and_saves_a_loadable_pipeline(tmp_path, tiny_sd, mode):
    from diffusers import StableDiffusionPipeline

    registry = PluginRegistry()
    resolved = load_recipe(write_recipe(tmp_path, tiny_sd, mode), registry)
    run_recipe(resolved, registry)
    run = tmp_path / "run"

    manifest = json.loads((run / "pairs" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 3 and manifest["num_shards"] == 2
    rows = [json.loads(line) for line in (run / "pairs" / "metadata.jsonl").read_text().splitlines()]
    assert all(set(r["degraded"].split()) < set(r["prompt"].split()) for r in rows)

    metrics = metric_rows(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # ln 2: student == reference

    if mode == "full":
        pipe = StableDiffusionPipeline.from_pretrained(run / "final", safety_checker=None)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
        pipe.load_lora_weights(run / "final")
    image = pipe("a cat", num_inference_steps=2, height=SD_RESOLUTION, width=SD_RESOLUTION,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (SD_RESOLUTION, SD_RESOLUTION, 3)

    # `prefopt pairs show DIR` needs no recipe: the dataset records the backbone that made it.
    code, err = cli("pairs", "show", run / "pairs", "--count", "2")
    assert code == 0, err
    assert (run / "pairs" / "pairs.png").stat().st_size > 0


def test_unpaired_pairs_reuse_another_prompts_positive(tmp_path, tiny_sd):
    """Paper Table 3b "not-paired": no negative image is generated; x0^l is another row's x0^w."""
    from prefopt.data.pairset import PairDataset

    registry = PluginRegistry()
    path = write_recipe(tmp_path, tiny_sd, "lora")
    data = yaml.safe_load(path.read_text())
    data["pairs"]["source"] = {"name": "not_paired"}
    path.write_text(yaml.safe_dump(data))
    run_recipe(load_recipe(path, registry), registry)

    dataset = PairDataset(tmp_path / "run" / "pairs")
    assert all(row["loser_from"] not in (None, row["index"]) for row in dataset.rows)
    x0_w, x0_l, prompts, negatives = dataset.batch(range(len(dataset)))
    for i, row in enumerate(dataset.rows):
        assert torch.equal(x0_l[i], x0_w[row["loser_from"]])
        assert set(negatives[i].split()) < set(prompts[i].split())  # c- is this prompt, degraded
    assert (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_a_compiler_torch_cannot_use_is_one_error_line(tmp_path, tiny_sd):
    """backbone.compile_sampling on a machine without a working C++ compiler: one line, exit 2."""
    import os
    import subprocess
    import sys

    recipe = yaml.safe_load(write_recipe(tmp_path, tiny_sd, "lora").read_text())
    recipe["backbone"]["compile_sampling"] = True
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled before can be reused
    done = subprocess.run([sys.executable, "-m", "prefopt.cli", "run", str(tmp_path / "recipe.yaml")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "torch.compile failed" in errors[0] and "compiler" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
