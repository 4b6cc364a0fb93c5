"""Every shipped recipe validates, round-trips through its resolved form, and takes overrides."""

from __future__ import annotations

import copy

import pytest
import yaml

from fixtures.dists import REPO_ROOT
from prefopt.compare import merge_variant
from prefopt.errors import RecipeError
from prefopt.recipe import TrainConfig, load_recipe, load_yaml, resolve
from prefopt.registry import PluginRegistry

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
IDS = [r.name for r in RECIPES]


@pytest.fixture
def registry():
    # A fresh registry per test: nothing leaks between tests or runs.
    return PluginRegistry()


def test_there_are_recipes():
    assert RECIPES, "recipes/ holds no *.yaml"


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_validates(path, registry):
    resolved = load_recipe(path, registry)
    assert resolved.recipe.objective.name in registry.names("objective")
    # Every component got its plugin's typed Config.
    assert ("backbone",) in resolved.configs and ("objective",) in resolved.configs


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_resolved_recipe_round_trips(path, registry, tmp_path):
    # recipe.resolved.yaml is what a run writes and what --resume compares
    # against: it must validate again and resolve to the same thing.
    resolved = load_recipe(path, registry)
    written = tmp_path / "recipe.resolved.yaml"
    written.write_text(resolved.to_yaml())
    again = load_recipe(written, PluginRegistry())
    assert again.to_dict() == resolved.to_dict()
    assert again.to_yaml() == resolved.to_yaml()
    # Defaults are filled in: the resolved objective lists every Config field.
    objective_cls = registry.get("objective", resolved.recipe.objective.name)
    assert set(objective_cls.Config.model_fields) <= set(yaml.safe_load(written.read_text())["objective"])


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_overrides_apply(path, registry):
    resolved = load_recipe(path, registry, ["train.max_steps=10", "seed=7"])
    assert resolved.recipe.train.max_steps == 10
    assert resolved.recipe.seed == 7
    # Overrides change the loaded recipe, not the file.
    assert load_recipe(path, registry).recipe.train.max_steps == load_yaml(path).get("train", {}).get(
        "max_steps", TrainConfig.model_fields["max_steps"].default
    )


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_plugin_param_override_reaches_the_config(path, registry):
    data = load_yaml(path)
    objective = data["objective"]["name"]
    fields = registry.get("objective", objective).Config.model_fields
    if "beta" not in fields:
        pytest.skip(f"{objective} has no beta")
    resolved = load_recipe(path, registry, ["objective.beta=5"])
    assert resolved.config("objective").beta == 5.0
    assert resolved.to_dict()["objective"]["beta"] == 5.0


@pytest.mark.parametrize("path", [p for p in RECIPES if "compare" in load_yaml(p)],
                         ids=[p.name for p in RECIPES if "compare" in load_yaml(p)])
def test_compare_variants_validate(path, registry):
    # `prefopt compare` resolves each variant on top of the recipe; a typo in a
    # variant must be caught here, not after the first variants have trained.
    resolved = load_recipe(path, registry)
    base = resolved.to_dict()
    base.pop("compare")
    for name, overrides in resolved.recipe.compare.variants.items():
        resolve(merge_variant(base, overrides), registry, where=f"{path} (variant {name})")


def test_override_into_a_list_section(registry):
    path = REPO_ROOT / "recipes" / "toy2d_ddspo.yaml"
    if not load_yaml(path).get("eval"):
        pytest.skip("recipe has no eval list")
    resolved = load_recipe(path, registry, ["eval.0.samples_per_condition=123"])
    assert resolved.config("eval", 0).samples_per_condition == 123


def test_override_replaces_a_component(registry):
    path = REPO_ROOT / "recipes" / "toy2d_ddspo.yaml"
    resolved = load_recipe(path, registry, ["objective={name: diffusion_dpo, beta: 100}"])
    assert resolved.recipe.objective.name == "diffusion_dpo"
    assert resolved.config("objective").beta == 100.0


def test_loading_does_not_mutate_between_registries():
    # Two registries resolve the same data independently.
    path = REPO_ROOT / "recipes" / "toy2d_ddspo.yaml"
    data = load_yaml(path)
    a = resolve(copy.deepcopy(data), PluginRegistry())
    b = resolve(copy.deepcopy(data), PluginRegistry())
    assert a.to_dict() == b.to_dict()


def test_override_of_a_missing_field_is_an_error(registry):
    with pytest.raises(RecipeError, match="max_steps"):
        load_recipe(REPO_ROOT / "recipes" / "toy2d_ddspo.yaml", registry, ["train.max_step=3"])


def test_reference_doc_lists_every_setting_of_every_plugin(registry):
    from prefopt.interfaces import KINDS
    from prefopt.reference_doc import _nested_model, recipe_reference_markdown

    markdown = recipe_reference_markdown(registry)
    for kind in KINDS:
        for name, cls in registry.all(kind).items():
            assert f"### `{name}`" in markdown
            for field_name, field in cls.Config.model_fields.items():
                assert f"\n{field_name}: " in markdown, f"{name}.{field_name} missing"
                nested = _nested_model(field.annotation)
                for sub in getattr(nested, "model_fields", {}):
                    # Nested settings (a backbone's finetune.rank) are listed too.
                    assert f"\n{field_name}.{sub}: " in markdown, f"{name}.{field_name}.{sub} missing"
    # Choices are spelled out, not just "Literal".
    assert "lr_scheduler: Literal['constant', 'linear', 'cosine'] = 'constant'" in markdown


def test_a_bare_yaml_no_means_no_mixed_precision(tmp_path):
    """YAML reads `no` as false; the field takes it as accelerate's "no"."""
    from prefopt.recipe import load_recipe
    from prefopt.registry import PluginRegistry

    recipe = REPO_ROOT / "recipes" / "toy2d_ddspo.yaml"
    resolved = load_recipe(recipe, PluginRegistry(), ["train.mixed_precision=no"])
    assert resolved.recipe.train.mixed_precision == "no"


def test_the_committed_recipe_reference_is_current(registry):
    from pathlib import Path

    from prefopt.reference_doc import recipe_reference_markdown

    committed = (Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md").read_text()
    assert committed == recipe_reference_markdown(registry), "regenerate it: python -m prefopt.reference_doc"
