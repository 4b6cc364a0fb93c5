"""One rule for relative paths: files a recipe reads come from the recipe's folder; run output from the working directory.

Each path field is checked with the recipe in one folder and the working
directory in another, so a field that still followed the working directory
would point at the wrong place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prefopt.recipe import load_recipe
from prefopt.registry import PluginRegistry

BASE = {
    "seed": 0,
    "backbone": {"name": "toy2d"},
    "pairs": {"source": {"name": "toy2d_neighbours"}},
    "objective": {"name": "ddspo"},
}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry()


@pytest.fixture
def folders(tmp_path, monkeypatch) -> Path:
    """The recipe's folder; the working directory is a sibling of it."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "recipes"


def _load(folder: Path, registry, **changes):
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return load_recipe(path, registry)


def test_pairs_prompts_path(folders, registry):
    resolved = _load(folders, registry, pairs={"source": {"name": "random_removal"},
                                               "prompts": {"path": "data/prompts.txt"}})
    assert resolved.recipe.pairs.prompts.path == str(folders / "data" / "prompts.txt")


def test_pretrain_pairs_prompts_path(folders, registry):
    resolved = _load(folders, registry, pretrain={"pairs": {"source": {"name": "toy2d_points"},
                                                            "prompts": {"path": "p.txt"}}})
    assert resolved.recipe.pretrain.pairs.prompts.path == str(folders / "p.txt")


def test_a_hub_id_stays_a_hub_id_and_a_file_beside_the_recipe_wins(folders, registry):
    prompts = {"source": {"name": "random_removal"}, "prompts": {"path": "someone/prompt-set"}}
    assert _load(folders, registry, pairs=prompts).recipe.pairs.prompts.path == "someone/prompt-set"
    (folders / "someone" / "prompt-set").mkdir(parents=True)  # a local datasets dir of that name
    assert _load(folders, registry, pairs=prompts).recipe.pairs.prompts.path == str(folders / "someone" / "prompt-set")


def test_absolute_paths_are_kept(folders, registry, tmp_path):
    absolute = str(tmp_path / "elsewhere" / "prompts.txt")
    resolved = _load(folders, registry, pairs={"source": {"name": "random_removal"}, "prompts": {"path": absolute}})
    assert resolved.recipe.pairs.prompts.path == absolute


@pytest.mark.parametrize("evaluator", ["clip_score", "t2i_compbench"])
def test_evaluator_prompt_files(folders, registry, evaluator):
    resolved = _load(folders, registry, eval=[{"name": evaluator, "prompts_file": "eval/prompts.txt"}])
    assert resolved.config("eval", 0).prompts_file.path == str(folders / "eval" / "prompts.txt")


def test_geneval_metadata_and_object_names(folders, registry):
    resolved = _load(folders, registry, eval=[{"name": "geneval", "metadata": "geneval/evaluation_metadata.jsonl",
                                               "object_names": "geneval/object_names.txt"}])
    config = resolved.config("eval", 0)
    assert config.metadata == str(folders / "geneval" / "evaluation_metadata.jsonl")
    assert config.object_names == str(folders / "geneval" / "object_names.txt")


def test_random_condition_prompts(folders, registry):
    objective = {"name": "ddspo", "random_condition": {"prompts": ["extra/a.jsonl", "extra/b.jsonl"]}}
    resolved = _load(folders, registry, objective=objective)
    assert resolved.config("objective").random_condition.prompts == [
        str(folders / "extra" / "a.jsonl"), str(folders / "extra" / "b.jsonl")]


def test_ddcpp_policy_paths(folders, registry):
    objective = {"name": "ddspo", "winner_policy": "../runs/policy_w/final", "loser_policy": "someone/policy-l"}
    config = _load(folders, registry, objective=objective).config("objective")
    assert config.winner_policy == str((folders.parent / "runs" / "policy_w" / "final"))
    assert config.loser_policy == "someone/policy-l"  # no such folder beside the recipe: a Hub id


def test_run_output_stays_in_the_working_directory(folders, registry):
    resolved = _load(folders, registry, output_dir="runs/x", pairs={"source": {"name": "toy2d_neighbours"},
                                                                    "dir": "pairsets/y"})
    assert resolved.recipe.output_dir == "runs/x"
    assert resolved.recipe.pairs.dir == "pairsets/y"


def test_the_resolved_recipe_records_the_absolute_paths(folders, registry):
    resolved = _load(folders, registry, eval=[{"name": "clip_score", "prompts_file": "p.txt"}])
    assert resolved.to_dict()["eval"][0]["prompts_file"]["path"] == str(folders / "p.txt")


def test_a_compare_variants_own_paths(folders, registry):
    from prefopt.compare import resolve_variants

    variants = {"rc": {"objective": {"random_condition": {"prompts": ["extra.jsonl"]}}}}
    resolved = _load(folders, registry, output_dir="cmp", compare={"variants": variants, "seeds": [0]})
    variant = resolve_variants(resolved, registry)["rc", 0]
    assert variant.config("objective").random_condition.prompts == [str(folders / "extra.jsonl")]


def test_pickapic_path(folders, registry):
    resolved = _load(folders, registry, backbone={"name": "sd"},
                     pairs={"source": {"name": "pickapic", "path": "data/pickapic_v2"}})
    assert resolved.config("pairs", "source").path == str(folders / "data" / "pickapic_v2")


def test_evaluator_checkpoint_and_reference_files(folders, registry):
    resolved = _load(folders, registry, eval=[
        {"name": "fid", "reference_images": "coco/images", "reference_statistics": {"inception": "stats.npz"},
         "inception_weights": "w/inception.pth"},
        {"name": "hpsv2", "checkpoint": "w/hps.pt"},
        {"name": "aesthetic", "head": "w/head.pth"},
        {"name": "image_reward", "med_config": "w/med_config.json"},
    ])
    fid, hps, aesthetic, image_reward = (resolved.config("eval", i) for i in range(4))
    assert fid.reference_images == str(folders / "coco" / "images")
    assert fid.reference_statistics == {"inception": str(folders / "stats.npz")}
    assert fid.inception_weights == str(folders / "w" / "inception.pth")
    assert hps.checkpoint == str(folders / "w" / "hps.pt")
    assert aesthetic.head == str(folders / "w" / "head.pth")
    assert image_reward.med_config == str(folders / "w" / "med_config.json")
    assert image_reward.model == "ImageReward-v1.0"  # a model name, not a path: untouched


def test_a_hub_id_with_a_dot_is_still_a_hub_id(folders, registry):
    objective = {"name": "ddspo", "winner_policy": "someone/policy-3.5-w", "loser_policy": "l/policy.safetensors"}
    config = _load(folders, registry, objective=objective).config("objective")
    assert config.winner_policy == "someone/policy-3.5-w"
    assert config.loser_policy == str(folders / "l" / "policy.safetensors")


def test_digits_geneval_metadata(folders, registry):
    resolved = _load(folders, registry, backbone={"name": "sd"},
                     eval=[{"name": "digits_geneval", "metadata": "../prompt_sets/train.jsonl"}])
    assert resolved.config("eval", 0).metadata == str(folders.parent / "prompt_sets" / "train.jsonl")


def test_every_plugin_field_named_like_a_file_follows_the_rule(registry):
    """A new plugin's file field left unmarked would follow the working directory (digits_geneval's did).

    Model fields (``backbone.pretrained``) follow the working directory on purpose (docs/recipe-reference.md);
    a field holding a nested Config (``prompts_file``) marks its own path.
    """
    from prefopt.paths import _kind

    file_like = ("metadata", "path", "file", "checkpoint", "weights")
    unmarked = []
    for kind in ("backbone", "pair_source", "objective", "evaluator"):
        for name in registry.names(kind):
            config = registry.get(kind, name).Config
            for field in config.model_fields:
                nested = "Config" in str(config.model_fields[field].annotation)
                if field.endswith(file_like) and not nested and _kind(config, field) is None:
                    unmarked.append(f"{kind} {name}: {field}")
    assert unmarked == []
