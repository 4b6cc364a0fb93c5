"""``backbone.train_text_encoder`` of the sd backbone: the text encoder trains with the UNet (tiny pipelines, CPU)."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import cli, error_lines
from tiny_models import load_backbone, objective, train_steps

from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT
from prefopt_backbones.sd import SDBackbone


def _text_weights(backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.modules["text_encoder"].state_dict().items()}


def test_text_encoder_trains_saves_and_loads_with_the_pipeline(tiny_sd_pixel, tmp_path):
    backbone = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False, train_text_encoder=True)
    module = backbone.trainable_module()
    # One module for the engine: the optimizer, clipping and checkpoints (its state_dict) see both parts.
    assert {name.split(".")[0] for name in module.state_dict()} == {"unet", "text_encoder"}
    assert {id(p) for p in backbone.modules["text_encoder"].parameters()} <= {id(p) for p in
                                                                             backbone.trainable_parameters()}
    before = _text_weights(backbone)
    losses = train_steps(backbone, objective("denoise"), 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = _text_weights(backbone)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "embeddings.token_embedding.weight" in moved and len(moved) > len(before) // 2

    backbone.save(str(tmp_path / "final"))
    # The next load reads the trained text encoder from the saved pipeline, as a hub id would be read...
    reloaded = load_backbone(SDBackbone, tmp_path / "final", "full", vae=False, train=False)
    assert all(torch.equal(after[k], v) for k, v in reloaded.modules["text_encoder"].state_dict().items())
    # ... and load_trained (prefopt eval of final/) puts it into a backbone loaded from the start.
    fresh = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False, train_text_encoder=True)
    fresh.load_trained(str(tmp_path / "final"))
    assert all(torch.equal(after[k], v) for k, v in _text_weights(fresh).items())
    # A saved model without its trained text encoder is refused, not paired with the untrained one.
    import shutil

    shutil.copytree(tmp_path / "final", tmp_path / "no_text")
    shutil.rmtree(tmp_path / "no_text" / "text_encoder")
    untouched = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False, train_text_encoder=True)
    unet_before = {k: v.clone() for k, v in untouched.modules["unet"].state_dict().items()}
    with pytest.raises(PrefoptError, match="holds no text_encoder/"):
        untouched.load_trained(str(tmp_path / "no_text"))
    # ... before anything was loaded: no trained UNet beside the untrained encoder.
    assert all(torch.equal(unet_before[k], v) for k, v in untouched.modules["unet"].state_dict().items())
    # Sampling goes through the pipeline with the trained encoder and the plain UNet.
    assert backbone.sample(["a red cube"], [0], source=STUDENT).shape[0] == 1


def test_without_the_switch_the_text_encoder_stays_frozen(tiny_sd_pixel):
    backbone = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False)
    before = _text_weights(backbone)
    train_steps(backbone, objective("denoise"), 1)
    assert all(torch.equal(before[k], v) for k, v in _text_weights(backbone).items())


def test_objectives_with_reference_predictions_are_refused(tiny_sd_pixel):
    backbone = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False, train_text_encoder=True)
    with pytest.raises(PrefoptError, match="train_text_encoder: this objective asks for reference predictions"):
        backbone.check_sources({STUDENT, REFERENCE})  # what validate and Trainer.setup call
    backbone.check_sources({STUDENT})
    backbone.release_idle({STUDENT}, text_cached=True)  # denoise: allowed; the trained encoder stays
    assert backbone.modules["text_encoder"] is backbone.trainable_module().text_encoder


def test_lora_with_a_trained_text_encoder_is_one_error_line(tmp_path):
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd", "pretrained": "x", "train_text_encoder": True},
        "pairs": {"source": {"name": "random_removal"}, "prompts": {"path": str(tmp_path / "p.txt")}},
        "objective": {"name": "denoise"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, err = cli("validate", path)
    assert code == 2
    assert len(error_lines(err)) == 1 and "train_text_encoder needs finetune.mode: full" in err, err


@pytest.mark.parametrize("objective", ["ddspo", "diffusion_dpo", "diffusion_kto"])
def test_reference_reading_objectives_are_refused_at_validate(tmp_path, objective):
    """Before anything is loaded, not after the pairs are built (issue 13's up-front checks)."""
    (tmp_path / "p.txt").write_text("a red 3\n")
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd", "pretrained": "x", "train_text_encoder": True, "finetune": {"mode": "full"}},
        "pairs": {"source": {"name": "random_removal"}, "prompts": {"path": str(tmp_path / "p.txt")}},
        "objective": {"name": objective},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, err = cli("validate", path)
    assert code == 2
    assert len(error_lines(err)) == 1 and f"objective {objective!r}: backbone.train_text_encoder" in err, err
    recipe["objective"] = {"name": "denoise"}
    path.write_text(yaml.safe_dump(recipe))
    code, err = cli("validate", path)
    assert code == 0, err


def test_describe_names_both_trained_modules():
    config = SDBackbone.Config(pretrained="x", finetune={"mode": "full"}, train_text_encoder=True)
    assert SDBackbone(config).describe()["trained"]["module"] == "unet + text_encoder"


# Each worker of `accelerate launch` runs `prefopt run` and, after training, writes its own copy of
# the trained module (UNet + text encoder): only rank 0 saves final/, so the ranks are compared here.
RECORD_TRAINED = r"""
import os, sys
import prefopt.engine.trainer as trainer
from safetensors.torch import save_file
train = trainer.Trainer.train
def recording_train(self):
    result = train(self)
    state = self.accelerator.unwrap_model(self.backbone.trainable_module()).state_dict()
    save_file({k: v.detach().contiguous() for k, v in state.items()},
              os.path.join(os.environ["TEST_RECORD_DIR"], f"trained-{self.rank}.safetensors"))
    return result
trainer.Trainer.train = recording_train
fetch = trainer.Trainer.fetch_batch
def recording_fetch(self, step, micro):
    batch = fetch(self, step, micro)
    with open(os.path.join(os.environ["TEST_RECORD_DIR"], f"prompts-{self.rank}.txt"), "a") as handle:
        handle.write("\n".join(batch.prompts) + "\n")
    return batch
trainer.Trainer.fetch_batch = recording_fetch
sys.argv = ["prefopt"] + sys.argv[1:]
from prefopt.cli import main
main()
"""


def test_two_processes_train_one_text_encoder(tmp_path):
    """DDP must average the text encoder's gradients with the UNet's: each process reads other scenes,
    so a text encoder outside the prepared module would train apart on each rank."""
    import os
    import subprocess

    from safetensors.torch import load_file

    from helpers import ENV, two_process_launch

    pytest.importorskip("sklearn")
    from prefopt_digits.model import build_untrained

    init = build_untrained(tmp_path / "init")
    recipe = {
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd", "pretrained": str(init), "vae": False, "finetune": {"mode": "full"},
                     "train_text_encoder": True},
        "pairs": {"source": {"name": "digit_scenes", "scenes": 32}},
        "objective": {"name": "denoise"},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 0, "loader_workers": 0,
                  "text_cache": True, "log_every": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script = tmp_path / "boot.py"
    script.write_text(RECORD_TRAINED)
    (tmp_path / "record").mkdir()
    done = subprocess.run(two_process_launch(str(script), "run", str(path)), capture_output=True, text=True,
                          env={**ENV, "TEST_RECORD_DIR": str(tmp_path / "record"), "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / "record" / f"trained-{r}.safetensors")) for r in (0, 1)]
    initial = load_file(str(init / "text_encoder" / "model.safetensors"))
    text = [k for k in ranks[0] if k.startswith("text_encoder.")]
    assert text and ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # one model, not two
    moved = [k for k in text if not torch.equal(ranks[0][k], initial[k.removeprefix("text_encoder.")])]
    assert "text_encoder.embeddings.token_embedding.weight" in moved
    # ... though each rank trained on its own scenes.
    read = [(tmp_path / "record" / f"prompts-{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(read[0]) == len(read[1]) == 8 and read[0] != read[1]


def test_a_trainer_built_in_code_refuses_them_at_setup(tiny_sd_pixel, tmp_path):
    """validate refuses the recipe; a Trainer built without it is refused when it sets up."""
    from prefopt.accelerate_setup import make_accelerator
    from prefopt.engine.trainer import Trainer
    from prefopt.recipe import TrainConfig

    backbone = load_backbone(SDBackbone, tiny_sd_pixel, "full", vae=False, train_text_encoder=True)
    cfg = TrainConfig(max_steps=1, batch_size=1, report_to=[])
    trainer = Trainer(backbone=backbone, objective=objective("ddspo", beta=500), dataset=None, cfg=cfg,
                      run_dir=tmp_path, seed=0, accelerator=make_accelerator(cfg))
    with pytest.raises(PrefoptError, match="train_text_encoder: this objective asks for reference predictions"):
        trainer.setup()
