"""Text embeddings cached before training: same loss, no text encoder in the step."""

from __future__ import annotations

import types

import pytest
import torch
from helpers import metric_rows, tiny_toy_recipe
from tiny_models import NEGATIVES, PROMPTS, load_backbone, objective, pair_batch

from prefopt.engine.step import FusedStep
from prefopt.engine.text_cache import TextCache
from prefopt.engine.trainer import step_generator
from prefopt_backbones.sana import SanaBackbone
from prefopt_backbones.sd import SDBackbone


def single_process():
    return types.SimpleNamespace(num_processes=1, process_index=0, is_main_process=True,
                                 device=torch.device("cpu"), wait_for_everyone=lambda: None)


@pytest.mark.parametrize("cls, fixture", [(SDBackbone, "tiny_sd"), (SanaBackbone, "tiny_sana")])
def test_cached_step_matches_and_never_calls_the_text_encoder(tmp_path, request, cls, fixture):
    backbone = load_backbone(cls, request.getfixturevalue(fixture))
    cache = TextCache.build(tmp_path / "cache", backbone, PROMPTS + NEGATIVES, 2, single_process())
    ddspo = objective("ddspo")
    expected = FusedStep(backbone, ddspo)(pair_batch(backbone), step_generator(0, 0, 0, 0), torch.device("cpu"))

    def no_encoder(prompts):
        raise AssertionError("the text encoder ran during a cached step")

    backbone.encode_prompts = no_encoder
    cached = FusedStep(backbone, ddspo, encode=cache.encode)(
        pair_batch(backbone), step_generator(0, 0, 0, 0), torch.device("cpu"))
    assert cached.loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)
    for key in ("mse/student_w", "mse/student_l", "mse/ref_l"):
        assert cached.metrics[key] == pytest.approx(expected.metrics[key], rel=1e-5)


def test_cache_is_reused_when_the_prompts_are_the_same(tmp_path):
    from prefopt.interfaces import Runtime
    from prefopt.registry import PluginRegistry

    cls = PluginRegistry().get("backbone", "toy2d")
    toy = cls(cls.Config(num_conditions=4, hidden=8, layers=1))
    toy.load(Runtime(device=torch.device("cpu"), dtype=torch.float32))
    calls = []
    original = toy.encode_prompts
    toy.encode_prompts = lambda prompts: calls.append(len(prompts)) or original(prompts)
    first = TextCache.build(tmp_path, toy, ["2", "0", "1", "0"], 8, single_process())
    TextCache.build(tmp_path, toy, ["0", "1", "2"], 8, single_process())
    assert calls == [3]  # encoded once, unique prompts only; the second build read the index
    assert torch.equal(first.encode(["1", "1", "2"])["condition"], torch.tensor([1, 1, 2]))


def test_a_run_with_text_cache_trains_like_one_without(tmp_path):
    from prefopt.stages import run_recipe
    from prefopt.recipe import resolve
    from prefopt.registry import PluginRegistry

    registry = PluginRegistry()
    losses = {}
    for cached in (False, True):
        data = tiny_toy_recipe(tmp_path / str(cached), train={"max_steps": 5, "text_cache": cached,
                                                              "checkpoint_every": 0})
        run_recipe(resolve(data, registry), registry)
        losses[cached] = [row["loss"] for row in metric_rows(tmp_path / str(cached))]
    assert len(list((tmp_path / "True" / "text_cache").glob("*/index.json"))) == 1
    assert losses[True] == losses[False]


def test_another_prompt_set_never_reads_parts_built_for_the_first(tmp_path):
    from prefopt.interfaces import Runtime
    from prefopt.registry import PluginRegistry

    cls = PluginRegistry().get("backbone", "toy2d")
    toy = cls(cls.Config(num_conditions=4, hidden=8, layers=1))
    toy.load(Runtime(device=torch.device("cpu"), dtype=torch.float32))
    TextCache.build(tmp_path, toy, ["0", "1"], 8, single_process())
    other = TextCache.build(tmp_path, toy, ["2", "3"], 8, single_process())
    assert torch.equal(other.encode(["3", "2"])["condition"], torch.tensor([3, 2]))



# ------------------------------------------------------------------ integrity


def _toy_cache(tmp_path, prompts, calls=None):
    from prefopt.interfaces import Runtime
    from prefopt.registry import PluginRegistry

    cls = PluginRegistry().get("backbone", "toy2d")
    toy = cls(cls.Config(num_conditions=8, hidden=8, layers=1))
    toy.load(Runtime(device=torch.device("cpu"), dtype=torch.float32))
    if calls is not None:
        original = toy.encode_prompts
        toy.encode_prompts = lambda texts: calls.append(list(texts)) or original(texts)
    return TextCache.build(tmp_path, toy, prompts, 8, single_process())


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_part_is_refused_naming_it_and_deleting_it_then_resuming_repairs(tmp_path):
    from prefopt.errors import DataError

    cache = _toy_cache(tmp_path, ["0", "1", "2"])
    part = cache.directory / "part-00000.safetensors"
    _flip_last_byte(part)
    fresh = _toy_cache(tmp_path, ["0", "1", "2"])  # a new process: the header still checks out
    with pytest.raises(DataError, match=r"part-00000\.safetensors is damaged \(row 2 of condition.*--resume"):
        fresh.encode(["2"])
    part.unlink()  # what the error says to do, then the run resumes and builds the cache again
    calls = []
    repaired = _toy_cache(tmp_path, ["0", "1", "2"], calls)
    assert calls == [["0", "1", "2"]]
    assert torch.equal(repaired.encode(["2", "0"])["condition"], torch.tensor([2, 0]))


@pytest.mark.parametrize("damage", ["sidecar edited", "index edited", "header edited", "part of another prompt set"])
def test_damaged_cache_files_are_encoded_again_at_the_start_of_a_run(tmp_path, damage):
    import json
    import shutil

    cache = _toy_cache(tmp_path, ["0", "1", "2"])
    directory = cache.directory
    if damage == "sidecar edited":
        sidecar = json.loads((directory / "part-00000.json").read_text())
        sidecar["rows"]["condition"][0] = sidecar["rows"]["condition"][1]
        (directory / "part-00000.json").write_text(json.dumps(sidecar))
    elif damage == "index edited":
        index = json.loads((directory / "index.json").read_text())
        index["prompts"] = ["1", "0", "2"]
        (directory / "index.json").write_text(json.dumps(index))
    elif damage == "header edited":
        data = bytearray((directory / "part-00000.safetensors").read_bytes())
        data[12] ^= 1
        (directory / "part-00000.safetensors").write_bytes(bytes(data))
    else:
        other = _toy_cache(tmp_path, ["3", "4", "5"]).directory
        for name in ("part-00000.json", "part-00000.safetensors"):
            shutil.copy(other / name, directory / name)
    calls = []
    repaired = _toy_cache(tmp_path, ["0", "1", "2"], calls)
    assert calls == ([] if damage == "index edited" else [["0", "1", "2"]])
    assert torch.equal(repaired.encode(["2", "0", "1"])["condition"], torch.tensor([2, 0, 1]))
