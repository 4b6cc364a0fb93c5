"""The complete examples in docs/writing-a-plugin.md run as printed.

Each example's code block is executed as a module of its own, registered as a
plugin, and used: the pair source's rows follow the seed convention, the
backbone trains a few DDSPO steps through the real engine on pairs it sampled,
and the evaluator scores it (and refuses a missing file in ``check()``).
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import yaml

from fixtures.dists import REPO_ROOT

DOC = REPO_ROOT / "docs" / "writing-a-plugin.md"


def _example(heading: str) -> str:
    text = DOC.read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, heading
    return blocks[0]


def _module(heading: str) -> types.ModuleType:
    module = types.ModuleType(f"doc_example_{heading.split()[-1]}")
    exec(compile(_example(heading), f"{DOC}:{heading}", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def plugins() -> types.ModuleType:
    from prefopt.api import hookimpl

    pair_source, evaluator, backbone = _module("A pair source"), _module("An evaluator"), _module("A backbone")
    hooks = types.ModuleType("doc_examples_plugin")
    hooks.PREFOPT_API = 2
    hooks.prefopt_pair_sources = hookimpl(lambda: [pair_source.WordShuffle])
    hooks.prefopt_evaluators = hookimpl(lambda: [evaluator.MeanDistance])
    hooks.prefopt_backbones = hookimpl(lambda: [backbone.PointsMLP])
    return hooks


def test_examples_import_only_the_public_api():
    for heading in ("A pair source", "An evaluator", "A backbone"):
        imported = set(re.findall(r"^\s*(?:from|import) (prefopt\S*)", _example(heading), re.M))
        assert imported == {"prefopt.api"}, heading


def test_word_shuffle_rows_follow_the_seed_convention(plugins):
    from prefopt.api import row_seed

    source = plugins.prefopt_pair_sources()[0](plugins.prefopt_pair_sources()[0].Config(variants=2))
    rows = source.pairs(["a red cube", "cat", "two green trees"], seed=7)
    assert [r.prompt for r in rows] == ["a red cube"] * 2 + ["two green trees"] * 2  # one-word prompt skipped
    assert all(sorted(r.degraded.split()) == sorted(r.prompt.split()) and r.degraded != r.prompt for r in rows)
    assert [r.seed for r in rows] == [row_seed(7, i) for i in range(4)]
    # A prompt's shuffles do not depend on where it sits in the list.
    moved = source.pairs(["two green trees", "a red cube"], seed=7)
    assert [r.degraded for r in moved[:2]] == [r.degraded for r in rows[2:]]


def test_backbone_trains_and_evaluator_scores_through_the_engine(plugins, tmp_path):
    from prefopt.errors import PrefoptError
    from prefopt.stages import run_recipe
    from prefopt.recipe import resolve
    from prefopt.registry import PluginRegistry

    registry = PluginRegistry([plugins])
    targets = tmp_path / "targets.csv"
    targets.write_text("0,1.0,0.0\n1,0.0,1.0\n")
    data = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "points_mlp", "num_conditions": 8, "hidden": 16, "num_train_timesteps": 100,
                     "sample_steps": 5},
        "pairs": {"source": {"name": "toy2d_neighbours"}},
        "objective": {"name": "ddspo"},
        "train": {"max_steps": 3, "batch_size": 4},
        "eval": [{"name": "mean_distance", "targets": str(targets), "samples": 4}],
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    results = run_recipe(resolve(data, registry, where=str(recipe)), registry)
    assert set(results) == {"distance/student", "distance/reference"}
    assert all(value > 0 for value in results.values())
    assert (tmp_path / "run" / "final" / "student.pt").is_file()

    missing = dict(data, output_dir=str(tmp_path / "run2"),
                   eval=[{"name": "mean_distance", "targets": str(tmp_path / "nope.csv")}])
    with pytest.raises(PrefoptError, match="targets file .*nope.csv does not exist"):
        run_recipe(resolve(missing, registry, where=str(recipe)), registry)
    assert not Path(tmp_path / "run2").exists()  # refused before training, before the run directory
