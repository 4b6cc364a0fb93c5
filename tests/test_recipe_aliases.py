"""Loading a recipe: YAML aliases are copies, a recipe file has a size bound, `~` is the home directory."""

from __future__ import annotations

import pytest
import yaml
from test_cli_errors import BASE

from prefopt.errors import RecipeError
from prefopt.recipe import MAX_RECIPE_BYTES, load_recipe, load_yaml, parse_override
from prefopt.registry import PluginRegistry

def test_an_override_changes_only_the_section_it_names_when_another_aliases_it(tmp_path):
    # `train: *common` shares one dict with pretrain.train in the parsed YAML; the override must not reach both.
    body = yaml.safe_dump({key: value for key, value in BASE.items() if key != "train"})
    text = ("pretrain:\n  pairs: {source: {name: toy2d_points}}\n  train: &common {max_steps: 5, batch_size: 8}\n"
            + body + "train: *common\n")
    (tmp_path / "recipe.yaml").write_text(text)
    data = load_recipe(tmp_path / "recipe.yaml", PluginRegistry(), ["train.max_steps=400"]).to_dict()
    assert data["train"]["max_steps"] == 400
    assert data["pretrain"]["train"]["max_steps"] == 5


def test_aliases_inside_an_override_value_are_copies():
    _, value = parse_override("compare.variants={a: &x {objective: {beta: 1}}, b: *x}")
    assert value["a"] == value["b"] and value["a"] is not value["b"]
    assert value["a"]["objective"] is not value["b"]["objective"]


def test_a_recipe_file_over_the_size_bound_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("seed: 0\n" + "# padding\n" * (MAX_RECIPE_BYTES // 10 + 1))
    with pytest.raises(RecipeError, match=r"huge.yaml is over 1 MiB: not a recipe"):
        load_yaml(path)


def test_a_home_relative_output_dir_and_pairs_dir_are_the_home_directorys(tmp_path, monkeypatch):
    """Taken literally, `~/probe` made a directory named `~` in the working directory (and `rm -r ~` ...)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(tmp_path / "recipe.yaml", PluginRegistry(),
                         ["output_dir=~/runs/probe", "pairs.dir=~/pairs"]).recipe
    assert recipe.output_dir == str(tmp_path / "home" / "runs" / "probe")
    assert recipe.pairs.dir == str(tmp_path / "home" / "pairs")
