"""The public plugin API (prefopt.api) and the checks it makes up front.

Each up-front check is run through the real CLI in a fresh interpreter: it
fails with one ``error:`` line, before anything is loaded (no torch import)
and before a run directory exists.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

import prefopt.api as api
from fixtures.dists import install_source, run_cli
from prefopt.errors import PluginError
from prefopt.interfaces import KINDS
from prefopt.registry import PluginRegistry

TOY = {
    "seed": 0,
    "backbone": {"name": "toy2d", "hidden": 8, "layers": 1, "num_train_timesteps": 100, "sample_steps": 4},
    "pairs": {"source": {"name": "toy2d_neighbours"}},
    "objective": {"name": "ddspo"},
    "train": {"max_steps": 2, "batch_size": 4},
}


def _recipe(tmp_path: Path, **changes) -> Path:
    data = {**TOY, "output_dir": str(tmp_path / "run"), **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_the_api_exports_every_interface_and_helper():
    assert api.API_VERSION == 2
    for name in api.__all__:
        assert hasattr(api, name), name
    exported = [getattr(api, name) for name in api.__all__]
    assert all(any(base is value for value in exported) for base in KINDS.values())
    for name in ("PromptPair", "Prediction", "ObjectiveInputs", "LossOutput", "Runtime", "PrefoptError",
                 "row_seed", "prompt_rng", "require_prompts", "hookimpl"):
        assert name in api.__all__


def test_first_party_sources_use_the_public_seed_helpers():
    from prefopt_pairs import common

    assert common.row_seed is api.row_seed and common.prompt_rng is api.prompt_rng
    assert common.require_prompts is api.require_prompts
    # The convention itself: stable across processes, 31 bits, per row.
    assert api.row_seed(0, 5) == api.row_seed(0, 5) != api.row_seed(0, 6)
    assert 0 <= api.row_seed(123, 4) < 2**31
    assert api.prompt_rng(1, "a cat").random() == api.prompt_rng(1, "a cat").random()
    with pytest.raises(api.RecipeError, match="set pairs.prompts"):
        api.require_prompts(None, "mine")


def _hook_module(version) -> types.ModuleType:
    module = types.ModuleType("someone_elses_plugin")
    if version is not None:
        module.PREFOPT_API = version
    return module


@pytest.mark.parametrize("version", [2])
def test_a_supported_api_version_is_accepted(version):
    PluginRegistry([_hook_module(version)], autoload=False)


@pytest.mark.parametrize("version", [None, 0, 1, 3, "2", True])
def test_another_api_version_is_refused_naming_the_plugin(version):
    # None: a plugin that declares nothing targets version 1, whose names version 2 changed.
    with pytest.raises(PluginError, match=r"plugin someone_elses_plugin targets prefopt plugin API .* provides API 2"):
        PluginRegistry([_hook_module(version)], autoload=False)


def test_objective_sees_the_backbones_timesteps_and_prediction_type():
    import torch

    from prefopt.engine.step import FusedStep, PairBatch
    from prefopt_backbones.toy2d import Toy2DBackbone

    backbone = Toy2DBackbone(Toy2DBackbone.Config(hidden=8, layers=1, num_train_timesteps=100))
    backbone.load(api.Runtime(device=torch.device("cpu"), dtype=torch.float32))
    seen = {}

    class Recording(api.Objective):
        name = "recording"

        def predictions(self):
            return (api.Prediction(api.STUDENT, "w", "c"),)

        def loss(self, inputs):
            seen.update(T=inputs.num_train_timesteps, kind=inputs.prediction_type)
            return api.LossOutput(inputs.predictions[api.Prediction(api.STUDENT, "w", "c")].sum())

    batch = PairBatch(torch.zeros(2, 2), torch.ones(2, 2), ["0", "1"], ["1", "0"])
    FusedStep(backbone, Recording())(batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert seen == {"T": 100, "kind": "epsilon"}


# ------------------------------------------------------------------ up-front checks


NO_PROMPTS = "pairs.source 'random_removal' needs prompts: set pairs.prompts.path"


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["pairs", "preview"]])
def test_a_text_pair_source_without_prompts_is_refused_up_front(tmp_path, command):
    recipe = _recipe(tmp_path, pairs={"source": {"name": "random_removal"}})
    code, _, err, heavy = run_cli([*command, str(recipe)])
    assert NO_PROMPTS in _one_error_line(code, err)
    assert heavy == [] and not (tmp_path / "run").exists()


def _run(recipe: Path, registry: PluginRegistry | None = None):
    """``prefopt run`` in this process (the CLI turns its PrefoptError into the one line)."""
    from prefopt.stages import run_recipe
    from prefopt.recipe import load_recipe

    registry = registry or PluginRegistry()
    return run_recipe(load_recipe(recipe, registry), registry)


def test_run_refuses_it_before_the_run_directory_exists(tmp_path):
    with pytest.raises(api.RecipeError, match=NO_PROMPTS):
        _run(_recipe(tmp_path, pairs={"source": {"name": "random_removal"}}))
    assert not (tmp_path / "run").exists()


def test_an_image_pair_source_on_a_backbone_without_images_is_refused(tmp_path):
    recipe = _recipe(tmp_path, pairs={"source": {"name": "pickapic", "path": str(tmp_path)}})
    code, _, err, _ = run_cli(["validate", str(recipe)])
    assert "'pickapic' gives images, but the toy2d backbone trains on points" in _one_error_line(code, err)


def test_a_sampled_pair_source_on_a_backbone_that_cannot_sample_is_refused(tmp_path):
    site = install_source(
        tmp_path / "site", "prefopt-no-sampling",
        {
            "prefopt_no_sampling/__init__.py": "",
            "prefopt_no_sampling/plugin.py": """
                from prefopt.api import Backbone, hookimpl

                PREFOPT_API = 2


                class Scorer(Backbone):
                    \"\"\"A backbone that trains but has no sampler.\"\"\"

                    name = "no_sampling"


                @hookimpl
                def prefopt_backbones():
                    return [Scorer]
            """,
        },
        {"no_sampling": "prefopt_no_sampling.plugin"},
    )
    recipe = _recipe(tmp_path, backbone={"name": "no_sampling"})
    code, _, err, _ = run_cli(["run", str(recipe), "--dry-run"], site)
    line = _one_error_line(code, err)
    assert "pairs.source 'toy2d_neighbours' leaves its images to be sampled" in line
    assert "the no_sampling backbone cannot sample" in line


def test_a_missing_evaluator_file_fails_before_any_step(tmp_path):
    missing = tmp_path / "geneval" / "evaluation_metadata.jsonl"
    recipe = _recipe(tmp_path, eval=[{"name": "geneval", "metadata": str(missing)}])
    with pytest.raises(api.PrefoptError) as refused:
        _run(recipe)
    assert "eval.0 (geneval)" in str(refused.value) and str(missing) in str(refused.value)
    # Refused before the run directory exists (nothing loaded, no step): once the file
    # is there, a plain `run` starts afresh without --overwrite.
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ pairs preview


def test_pairs_preview_prints_c_and_degraded_rows_without_loading_a_model(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube on a blue sphere\ntwo dogs under a green tree\n")
    recipe = _recipe(tmp_path, backbone={"name": "sd", "pretrained": "not/downloaded"},
                     pairs={"source": {"name": "random_removal"}, "prompts": {"path": "prompts.txt"}})
    code, out, err, heavy = run_cli(["pairs", "preview", str(recipe), "--count", "1"])
    assert code == 0, err
    assert heavy == []  # no torch, diffusers or transformers: nothing was loaded
    lines = out.strip().splitlines()
    assert len(lines) == 2  # one row, two lines
    assert "c: 'a red cube on a blue sphere'" in lines[0]
    degraded = lines[1].split("c-: ", 1)[1].split("  (", 1)[0].strip("'")
    assert degraded != "a red cube on a blue sphere"
    assert set(degraded.split()) < set("a red cube on a blue sphere".split())  # words removed, none added
    assert "winner: sampled; loser: sampled" in lines[1]
    assert not (tmp_path / "run").exists()


def test_pairs_preview_of_the_pretraining_stage(tmp_path):
    recipe = _recipe(tmp_path, pretrain={"pairs": {"source": {"name": "toy2d_points", "points_per_condition": 3}}})
    code, out, err, heavy = run_cli(["pairs", "preview", str(recipe), "--pretrain", "--count", "2"])
    assert code == 0, err
    assert heavy == [] and "winner: given tuple" in out


def test_pairs_preview_reads_only_the_rows_it_shows_of_a_huge_source(tmp_path):
    """toy2d_neighbours streams its rows: 10^14 pairs per condition used to be built as one list first (a hang)."""
    recipe = _recipe(tmp_path, pairs={"source": {"name": "toy2d_neighbours", "pairs_per_condition": 10**14}})
    code, out, err, _ = run_cli(["pairs", "preview", str(recipe), "--count", "3"], timeout=60)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 6  # three rows, two lines each
