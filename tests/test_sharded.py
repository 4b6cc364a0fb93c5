"""FSDP and DeepSpeed ZeRO through accelerate (recipes/accelerate/).

On a CPU machine accelerate does not shard: ``--use_fsdp`` would silently
train as plain data parallel, so prefopt refuses it. torch's FSDP2 does run on
gloo, so here: one DDSPO step of a tiny SD pipeline with its UNet sharded over
two processes equals the unsharded step (reference, student, loss, update),
and the gathered weights become a plain student that predicts and saves as
the trained one. The accelerate launches need GPUs (marked ``gpu``, skipped
without CUDA; ``docs/scripts/bench/gpu-checks.sh`` runs them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import load_backbone, objective, probe, train_steps

from helpers import ENV, free_port, metric_rows, write_toy_recipe
from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT
from prefopt_backbones.sd import SDBackbone

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP / DeepSpeed need CUDA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs FSDP")
def test_fsdp_on_a_cpu_machine_is_refused(monkeypatch):
    from prefopt.accelerate_setup import make_accelerator
    from prefopt.recipe import TrainConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(PrefoptError, match="FSDP, which accelerate runs on GPUs only"):
        make_accelerator(TrainConfig())


@pytest.mark.parametrize("mode", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_gathered_weights_make_a_plain_student(tiny_sd, tmp_path, mode):
    """What the engine does after a sharded run: the full state dict into a fresh student."""
    trained = load_backbone(SDBackbone, tiny_sd, mode)
    train_steps(trained, objective("ddspo", beta=16000), 2)
    state = {key: value.clone() for key, value in trained.trainable_module().state_dict().items()}

    adopted = load_backbone(SDBackbone, tiny_sd, mode)
    sharded_original = adopted.trainable_module()
    adopted.adopt_student_state(state)
    assert adopted.trainable_module() is not sharded_original
    for source in (STUDENT, REFERENCE):
        assert torch.equal(probe(adopted, source), probe(trained, source)), source
    assert not torch.equal(probe(adopted, STUDENT), probe(adopted, REFERENCE))  # it did train
    adopted.save(str(tmp_path / "adopted"))
    trained.save(str(tmp_path / "trained"))
    name = "pytorch_lora_weights.safetensors" if mode == "lora" else "unet/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "adopted" / name)), load_file(str(tmp_path / "trained" / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ FSDP2 on gloo

# Run by torch.distributed.run in each of 2 CPU processes: one DDSPO step of a tiny SD backbone whose
# UNet is sharded with torch's fully_shard (FSDP2, what recipes/accelerate/fsdp.yaml asks accelerate
# for on GPUs; accelerate itself does not shard on a CPU machine), against the same step unsharded.
FSDP2_STEP = r"""
import json, sys
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

tests, pretrained, mode, out = sys.argv[1:5]
LR = 10.0 if mode == "lora" else 0.01  # a visible step; the full UNet's gradients are larger
sys.path.insert(0, tests)
from tiny_models import load_backbone, objective, pair_batch, probe
from prefopt.engine.step import FusedStep
from prefopt_backbones.sd import SDBackbone

dist.init_process_group("gloo")
torch.set_num_threads(1)

def trained_parameters(backbone):
    # Taken before any forward, as the trainer takes them: after a forward FSDP2's root module
    # shows its gathered parameters, which the next backward drops.
    return [p for p in backbone._trainable.parameters() if p.requires_grad]

def one_step(backbone, params):
    # The same batch on both processes: the averaged gradient is the one-process gradient.
    optimizer = torch.optim.SGD(params, lr=LR)
    step = FusedStep(backbone, objective("ddspo", beta=16000))
    loss = step(pair_batch(backbone), torch.Generator().manual_seed(0), torch.device("cpu")).loss
    loss.backward()
    optimizer.step()
    return float(loss)

torch.manual_seed(0)  # the LoRA adapter's random init, the same in both backbones
plain = load_backbone(SDBackbone, pretrained, mode)
plain.set_trainable_module(plain.trainable_module())
plain_params = trained_parameters(plain)
expected = {"reference": probe(plain, "reference"), "student": probe(plain, "student")}
expected_loss = one_step(plain, plain_params)
expected["trained"] = probe(plain, "student")

torch.manual_seed(0)
sharded = load_backbone(SDBackbone, pretrained, mode)
unet = sharded.trainable_module()
for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
    fully_shard(block)
fully_shard(unet)
sharded.set_trainable_module(unet)
sharded_params = trained_parameters(sharded)
assert type(next(unet.parameters())).__name__ == "DTensor"
found = {"reference": probe(sharded, "reference"), "student": probe(sharded, "student")}
found_loss = one_step(sharded, sharded_params)
state = get_model_state_dict(unet, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if dist.get_rank() == 0:
    sharded.adopt_student_state(state)
    found["trained"] = probe(sharded, "student")
    found["reference_after"] = probe(sharded, "reference")
    diff = {k: float((found[k] - expected[k]).abs().max()) for k in ("reference", "student", "trained")}
    diff["reference_after"] = float((found["reference_after"] - expected["reference"]).abs().max())
    moved = float((expected["trained"] - expected["student"]).abs().max())
    with open(out, "w") as handle:
        json.dump({"diff": diff, "moved": moved, "loss": [expected_loss, found_loss]}, handle)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("mode", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_fsdp2_sharded_step_matches_the_unsharded_one(tmp_path, tiny_sd, mode):
    """Reference (LoRA: adapters off on the sharded module; full: the frozen copy) and student
    predictions, the loss and the updated weights of a step under FSDP2 equal the unsharded step's,
    and the gathered weights become a plain student."""
    import json

    script, out = tmp_path / "fsdp2_step.py", tmp_path / "result.json"
    script.write_text(FSDP2_STEP)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(script), str(ROOT / "tests"), str(tiny_sd), mode, str(out)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["moved"] > 1e-4  # the step changed the student
    assert all(diff < 1e-5 * max(1.0, result["moved"]) for diff in result["diff"].values()), result
    assert result["loss"][1] == pytest.approx(result["loss"][0], rel=1e-6)


# ------------------------------------------------------------------------------ GPU: real launches


def launch(config: str | None, recipe: Path, *overrides: str) -> subprocess.CompletedProcess:
    processes = max(torch.cuda.device_count(), 1)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_port", str(free_port())]
    command += ["--config_file", str(CONFIGS / config)] if config else (["--multi_gpu"] if processes > 1 else [])
    command += ["-m", "prefopt.cli", "run", str(recipe), *overrides]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
@pytest.mark.gpu
@needs_cuda
def test_sharded_toy_run_matches_data_parallel(tmp_path, config):
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    recipe = write_toy_recipe(tmp_path, pretrain=False, train={"max_steps": 6, "grad_accum": 2, "lr_scheduler": "cosine",
                                                                "warmup_steps": 2, "mixed_precision": "bf16"})
    plain = launch(None, recipe, f"output_dir={tmp_path / 'ddp'}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    sharded = launch(config, recipe, f"output_dir={tmp_path / 'sharded'}")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    a, b = metric_rows(tmp_path / "ddp"), metric_rows(tmp_path / "sharded")
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=2e-2, abs=2e-3)
    assert (tmp_path / "sharded" / "final").is_dir()


@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero3.yaml"])
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.gpu
@needs_cuda
def test_sharded_sd_run_keeps_its_reference(tmp_path, tiny_sd, config, mode):
    """LoRA's reference (adapters off, through the wrapper) and the full copy under sharding:
    DDSPO's first loss is ln 2 (student = reference), and final/ loads into diffusers."""
    import yaml

    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car on a road\na dog sitting under a tree\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd", "pretrained": str(tiny_sd), "finetune": {"mode": mode, "rank": 4},
                     "resolution": 16, "num_inference_steps": 2},
        "pairs": {"source": {"name": "random_removal", "variants": 1},
                  "prompts": {"path": str(tmp_path / "prompts.txt"), "min_words": 2}},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-4, "mixed_precision": "bf16"},
    }))
    done = launch(config, recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metric_rows(tmp_path / "run")
    assert rows[0]["loss"] == pytest.approx(0.6931472, abs=2e-3)
    from diffusers import StableDiffusionPipeline

    if mode == "full":
        StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "final", safety_checker=None)
    else:
        StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None).load_lora_weights(tmp_path / "run" / "final")
