"""Handing a run on: the model card in final/, `prefopt push` (up to the network call) and `prefopt export`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from helpers import cli, error_lines, write_toy_recipe
from tiny_models import PROMPTS, SD_RESOLUTION, load_backbone

from prefopt import checksums
from prefopt.model_card import write_model_card
from prefopt.recipe import resolve
from prefopt.registry import PluginRegistry
from prefopt_backbones.sd import SDBackbone

LICENSE = "creativeml-openrail-m"
RANK, ALPHA = 4, 8  # alpha != rank, so a lost alpha shows in the outputs
RUN_ID = "lora-run"


@pytest.fixture(scope="module")
def base(tiny_sd, tmp_path_factory):
    """The tiny SD pipeline with a model card that states its license, as a hub model has."""
    path = tmp_path_factory.mktemp("base") / "sd"
    shutil.copytree(tiny_sd, path)
    (path / "README.md").write_text(f"---\nlicense: {LICENSE}\n---\n\n# tiny SD\n")
    return path


def _resolved_recipe(base, output_dir) -> dict:
    data = {
        "seed": 0,
        "output_dir": str(output_dir),
        "backbone": {"name": "sd", "pretrained": str(base), "resolution": SD_RESOLUTION, "num_inference_steps": 2,
                     "finetune": {"mode": "lora", "rank": RANK, "alpha": ALPHA}},
        "pairs": {"source": {"name": "random_removal"}},
        "objective": {"name": "ddspo", "beta": 16000},
        "train": {"max_steps": 200, "batch_size": 8, "grad_accum": 4},
        "eval": [],
    }
    return resolve(data, PluginRegistry()).to_dict()


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    """A finished LoRA run directory: recipe, metrics, eval scores, pairs manifest, a figure and final/."""
    run = tmp_path_factory.mktemp("lora") / "run"
    final = run / "final"
    final.mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(_resolved_recipe(base, run), sort_keys=False))
    rows = [{"step": s, "loss": 0.69 - s * 1e-4, "pref/accuracy": 0.6, "pref/margin": 0.01} for s in (100, 200)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"clip/score": 0.3125, "clip/win_rate": 0.75}))
    (run / "pairs").mkdir()
    (run / "pairs" / "manifest.json").write_text(json.dumps({"num_rows": 1234, "complete": True}))
    (run / "samples.png").write_bytes(b"\x89PNG fake figure")

    backbone = load_backbone(SDBackbone, base, "lora", finetune={"rank": RANK, "alpha": ALPHA})
    for name, param in backbone.trainable_module().named_parameters():
        if "lora_B" in name:  # a trained-looking adapter (B starts at 0)
            torch.nn.init.normal_(param, std=0.3, generator=torch.Generator().manual_seed(0))
    backbone.save(str(final))
    # As save_final leaves it: sealed with the run's id (export and push refuse an unsealed final/).
    checksums.write_run_record(run, RUN_ID)
    checksums.seal(final, RUN_ID)
    write_model_card(run, SDBackbone.pipeline_class, num_processes=2)  # sealed again with the card
    return run


def test_model_card_metadata_and_contents(lora_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(lora_run / "final" / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.license == LICENSE  # read from the base model's own card
    assert card.data.base_model is None  # a local directory is no Hub id
    assert card.data.pipeline_tag == "text-to-image"
    assert {"prefopt", "ddspo", "sd", "lora", "text-to-image"} <= set(card.data.tags)
    text = card.text
    assert "`ddspo` preference objective with β = 16000" in text
    assert "1234 preference pairs from the `random_removal` pair source" in text
    assert "| steps | 200 |" in text
    assert "8 pairs × 4 accumulation × 2 process(es) = 64 pairs per step" in text
    assert "| `clip/win_rate` | 0.75 |" in text
    assert "| `loss` | 0.67 |" in text  # the last logged step's metrics
    assert "LoRA rank 4" in text
    assert "![samples](samples.png)" in text
    assert (lora_run / "final" / "samples.png").read_bytes() == b"\x89PNG fake figure"
    assert "pipe.load_lora_weights(model)" in text
    recipe = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe) == yaml.safe_load((lora_run / "recipe.resolved.yaml").read_text())


def test_model_card_names_a_hub_base_model(lora_run, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from prefopt import model_card

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    recipe["backbone"]["pretrained"] = "CompVis/stable-diffusion-v1-4"
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    asked = []

    def hub_card(repo_id, **kwargs):  # the Hub's card of the base model, without the network
        asked.append(repo_id)
        return ModelCard(f"---\nlicense: {LICENSE}\n---\n")

    monkeypatch.setattr(ModelCard, "load", staticmethod(hub_card))
    card, _ = model_card.build_card(run, SDBackbone.pipeline_class)
    assert asked == ["CompVis/stable-diffusion-v1-4"]
    assert card.data.base_model == "CompVis/stable-diffusion-v1-4"
    assert card.data.license == LICENSE
    assert '"CompVis/stable-diffusion-v1-4", torch_dtype' in card.text


def test_card_keeps_a_sealed_final_verifiable(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    (run / "final" / "README.md").unlink()
    (run / "final" / "samples.png").unlink()
    checksums.seal(run / "final", "run-1")
    write_model_card(run, SDBackbone.pipeline_class)
    checksums.verify(run / "final", "trained weights", "", run_id="run-1")  # the card and grid are on record


def test_toy_run_writes_a_card_with_its_eval(tmp_path):
    recipe = write_toy_recipe(tmp_path, eval=[{"name": "toy2d_modes", "samples_per_condition": 20}],
                              train={"max_steps": 5, "checkpoint_every": 0})
    code, err = cli("run", recipe)
    assert code == 0, err
    text = (tmp_path / "run" / "final" / "README.md").read_text()
    assert text.startswith("---\n") and "library_name: diffusers" in text
    assert "a reference model pretrained in the same run" in text
    assert "| `toy/mode_accuracy` |" in text
    assert (tmp_path / "run" / "final" / "samples.png").read_bytes() == (tmp_path / "run" / "samples.png").read_bytes()


# ---------------------------------------------------------------------------- push


class FakeHub:
    """HfApi's network calls, recorded; what the upload would send is read at call time.

    ``fail``: the exception the upload (``create_commit`` or ``upload_folder``) raises, as an offline
    or refused push does.
    """

    def __init__(self, monkeypatch, fail: Exception | None = None):
        from huggingface_hub import HfApi

        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail = fail
        monkeypatch.setattr(HfApi, "create_repo", self._create_repo)
        monkeypatch.setattr(HfApi, "create_commit", self._create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", self._upload_folder)

    def _create_repo(self, repo_id, **kwargs):  # set on the class as a bound method: no HfApi self
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def _create_commit(self, **kwargs):
        self.calls.append(("create_commit", kwargs))
        if self.fail is not None:
            raise self.fail
        self.uploaded = {}
        for op in kwargs["operations"]:
            data = op.path_or_fileobj
            self.uploaded[op.path_in_repo] = data if isinstance(data, bytes) else open(data, "rb").read()

    def _upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.fail is not None:
            raise self.fail
        folder = kwargs["folder_path"]
        self.uploaded = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def pushable(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    return run


def test_push_uploads_final_with_the_card_naming_the_repo(pushable, monkeypatch):
    hub = FakeHub(monkeypatch)
    code, err = cli("push", pushable, "--repo-id", "someone/sd-ddspo", "--private")
    assert code == 0, err
    assert [name for name, _ in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][1]["repo_id"] == "someone/sd-ddspo" and hub.calls[0][1]["private"] is True
    assert hub.calls[1][1]["repo_id"] == "someone/sd-ddspo"
    final = pushable / "final"
    assert set(hub.uploaded) == {p.name for p in final.iterdir()}  # all of final/, nothing else
    assert {"pytorch_lora_weights.safetensors", "README.md", "samples.png", "integrity.json"} <= set(hub.uploaded)
    assert b'model = "someone/sd-ddspo"' in hub.uploaded["README.md"]
    assert hub.uploaded["pytorch_lora_weights.safetensors"] == (final / "pytorch_lora_weights.safetensors").read_bytes()


def test_push_refuses_a_run_without_final(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    code, err = cli("push", tmp_path, "--repo-id", "someone/model")
    assert code == 2 and len(error_lines(err)) == 1 and "no final/" in err
    assert hub.calls == []


def test_push_rejects_a_bad_repo_id(pushable, monkeypatch):
    hub = FakeHub(monkeypatch)
    code, err = cli("push", pushable, "--repo-id", "not a repo id")
    assert code == 2 and len(error_lines(err)) == 1 and "not a Hub repository id" in err
    assert hub.calls == []


def test_push_failure_is_one_line(pushable, monkeypatch):
    FakeHub(monkeypatch, fail=RuntimeError("401 Client Error: Unauthorized\nmore detail"))
    code, err = cli("push", pushable, "--repo-id", "someone/model")
    assert code == 2
    assert error_lines(err) == ["error: push to someone/model failed: 401 Client Error: Unauthorized"]
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- export


def _unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, len(PROMPTS[0].split()) + 2, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def base_and_lora_outputs(base, lora_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    plain = _unet_output(pipe.unet)
    pipe.load_lora_weights(lora_run / "final")
    return plain, _unet_output(pipe.unet)


def test_export_merged_equals_base_plus_lora(lora_run, base_and_lora_outputs, tmp_path):
    from diffusers import StableDiffusionPipeline

    plain, with_lora = base_and_lora_outputs
    out = tmp_path / "merged"
    code, err = cli("export", lora_run, "--to", "merged", "--output", out)
    assert code == 0, err
    merged = StableDiffusionPipeline.from_pretrained(out)
    assert not getattr(merged.unet, "peft_config", None)  # fused weights, no adapter layers
    output = _unet_output(merged.unet)
    assert torch.allclose(output, with_lora, atol=1e-5)
    assert not torch.allclose(output, plain, atol=1e-3)  # the LoRA changed something


def test_export_kohya_layout_and_round_trip(lora_run, base, base_and_lora_outputs, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    _, with_lora = base_and_lora_outputs
    out = tmp_path / "lora_kohya.safetensors"
    code, err = cli("export", lora_run, "--to", "kohya", "--output", out)
    assert code == 0, err
    with safe_open(str(out), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
        alphas = {float(handle.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    modules = {k.split(".")[0] for k in keys}
    assert {k.split(".", 1)[1] for k in keys} == {"alpha", "lora_down.weight", "lora_up.weight"}
    assert len(keys) == 3 * len(modules)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert alphas == {float(ALPHA)}
    assert metadata["ss_network_dim"] == str(RANK) and metadata["ss_network_alpha"] == str(ALPHA)

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(str(out.parent), weight_name=out.name)
    assert torch.allclose(_unet_output(pipe.unet), with_lora, atol=1e-5)


def test_export_refuses_what_it_cannot_export(lora_run, tmp_path):
    full = tmp_path / "full"
    shutil.copytree(lora_run, full)
    (full / "final" / "pytorch_lora_weights.safetensors").unlink()
    code, err = cli("export", full, "--to", "kohya")
    assert code == 2 and len(error_lines(err)) == 1 and "is not a LoRA" in err

    code, err = cli("export", lora_run, "--to", "onnx")
    assert code == 2 and len(error_lines(err)) == 1 and "one of merged, kohya" in err

    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"user data")
    code, err = cli("export", lora_run, "--to", "kohya", "--output", out)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"user data"


def test_card_reads_both_eval_json_forms():
    from prefopt.model_card import _eval_scores

    assert _eval_scores({"toy/mode_accuracy": 0.7, "note": "x"}) == {"toy/mode_accuracy": 0.7}
    report = {"bootstrap": {"resamples": 1000}, "models": {"base": {"metrics": {"clip/score": 0.2}},
                                                            "final": {"metrics": {"clip/score": 0.3}}}}
    assert _eval_scores(report) == {"clip/score": 0.3}
