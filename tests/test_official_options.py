"""The official DDSPO trainer's options that prefopt carries as typed settings.

Random-condition removal (objective ``random_condition``, official ``--rand_cond``),
separate noise for winner and loser (objective ``noise: independent``, official
``--pos_neg_different_noise``), non-uniform timestep sampling (sd/sdxl
``timestep_sampling``, official ``--timestep_sampling``) and the Diffusion-DPO /
KTO scripts' prompt dropout (``prompt_dropout``, their ``--proportion_empty_prompts``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from helpers import cli, metric_rows, write_toy_recipe
from prefopt.engine.step import FusedStep, PairBatch
from prefopt.engine.trainer import step_generator
from prefopt.errors import DataError
from prefopt.interfaces import Runtime
from prefopt.registry import PluginRegistry
from prefopt_objectives.prompt_rewrites import (
    PromptDropout,
    RandomCondition,
    RandomConditionConfig,
    read_extra_prompts,
    replace_probability,
)

CPU = torch.device("cpu")


def toy_backbone():
    cls = PluginRegistry().get("backbone", "toy2d")
    backbone = cls(cls.Config(num_conditions=4, hidden=32, layers=2, num_train_timesteps=100))
    backbone.load(Runtime(device=CPU, dtype=torch.float32))
    return backbone


def objective(name, **params):
    cls = PluginRegistry().get("objective", name)
    return cls(cls.Config(**params))


def toy_batch(n=6):
    g = torch.Generator().manual_seed(0)
    return PairBatch(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g),
                     [str(i % 2) for i in range(n)], [str((i + 1) % 2) for i in range(n)])


def extra_file(tmp_path, rows, name="extra.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# --------------------------------------------------------------------------- random-condition removal


@pytest.mark.parametrize(("schedule", "tau", "expected"), [
    ("sigmoid", 0.7, 0.5),                          # official: 1/(1+exp(−λ(t/T − 0.7)))
    ("sigmoid", 1.0, 1 / (1 + math.exp(-20 * 0.3))),
    ("sigmoid", 0.0, 1 / (1 + math.exp(20 * 0.7))),
    ("exponential", 1.0, 1.0),                      # official: exp(−λ(1 − t/T))
    ("exponential", 0.9, math.exp(-2.0)),
    ("constant", 0.1, 1.0),                         # official constant_1
])
def test_replace_probability_is_the_official_schedule(schedule, tau, expected):
    p = replace_probability(torch.tensor([tau]), schedule, 20.0)
    assert p.item() == pytest.approx(expected, rel=1e-6)  # t_fraction arrives in float32


def test_extra_prompts_keep_the_official_rows(tmp_path):
    path = extra_file(tmp_path, [
        {"prompt": "a red cat on a mat", "neg_prompts": ["red mat", "a cat"]},
        {"prompt": "in the training set", "neg_prompts": ["training"]},   # a training prompt: left out
        {"prompt": "", "neg_prompts": ["x"]},                              # empty prompt
        {"prompt": "no variants", "neg_prompts": []},                      # no degraded variant
        {"prompt": "not a list", "neg_prompts": "x"},
        {"id": 3},
    ])
    pool = read_extra_prompts([path], exclude={"in the training set"})
    assert pool == [("a red cat on a mat", ["red mat", "a cat"])]


@pytest.mark.parametrize(("content", "message"), [
    (None, "extra prompt file not found"),
    ("{not json\n", r"extra.jsonl:1: not valid JSON"),
    ('["a"]\n', "expected one JSON object per line"),
    ('{"prompt": "x"}\n', "no usable extra prompts"),
    ('{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "is not UTF-8 text"),
])
def test_bad_extra_prompt_files_are_one_line_data_errors(tmp_path, content, message):
    path = tmp_path / "extra.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_extra_prompts([str(path)], exclude=set())


def test_swaps_follow_the_schedule_and_draw_from_the_pool(tmp_path):
    pool = [{"prompt": "2", "neg_prompts": ["3"]}, {"prompt": "3", "neg_prompts": ["2", "1"]}]
    config = RandomConditionConfig(prompts=[extra_file(tmp_path, pool)], schedule="sigmoid", steepness=20)
    rewrite = RandomCondition(config, train_prompts={"0", "1"})
    assert sorted(set(rewrite.texts())) == ["1", "2", "3"]
    n = 20000
    prompts, negatives = ["0"] * n, ["1"] * n
    for tau in (0.6, 0.7, 0.8):
        out = rewrite(prompts, negatives, torch.full((n,), tau), torch.Generator().manual_seed(1))
        p = 1 / (1 + math.exp(-20 * (tau - 0.7)))
        assert abs(out.swapped.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
        for i in range(n):
            pair = (out.prompts[i], out.degraded[i])
            assert pair in {("2", "3"), ("3", "2"), ("3", "1")} if out.swapped[i] else pair == ("0", "1")
    # The same generator state draws the same swaps (resume); both extra prompts are used.
    again = rewrite(prompts[:50], negatives[:50], torch.full((50,), 0.9), torch.Generator().manual_seed(2))
    twice = rewrite(prompts[:50], negatives[:50], torch.full((50,), 0.9), torch.Generator().manual_seed(2))
    assert (again.prompts, again.degraded) == (twice.prompts, twice.degraded)
    assert torch.equal(again.swapped, twice.swapped) and {"2", "3"} <= set(again.prompts)


@pytest.mark.parametrize("name", ["ddspo", "diffusion_dpo"])
def test_a_swapped_pair_trains_as_ddspo_on_the_extra_prompt(tmp_path, name):
    """Every pair swapped (constant schedule): the loss is DDSPO's on (c_e, c_e-), with the pair's t and noise.

    For Diffusion-DPO this is the official code's DPO baseline with --rand_cond:
    swapped pairs take the reference's targets on c_e / c_e- instead of the noise.
    """
    path = extra_file(tmp_path, [{"prompt": "2", "neg_prompts": ["3"]}])
    settings = {"random_condition": {"prompts": [path], "schedule": "constant"}, "beta": 2000}
    swapping = objective(name, **settings)
    backbone = toy_backbone()
    backbone.student.output[1].weight.data.add_(0.05)  # student ≠ reference, so targets matter
    batch = toy_batch()
    rewrite = swapping.prompt_rewrite({"0", "1"})
    out = FusedStep(backbone, swapping, rewrite=rewrite)(batch, step_generator(0, 0, 0, 0), CPU)
    assert out.metrics["rand_cond/swapped"] == 1.0
    n = len(batch)
    by_hand = PairBatch(batch.x0_w, batch.x0_l, ["2"] * n, ["3"] * n)
    expected = FusedStep(backbone, objective("ddspo", beta=2000))(by_hand, step_generator(0, 0, 0, 0), CPU)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    plain_dpo = FusedStep(backbone, objective("diffusion_dpo", beta=2000))(batch, step_generator(0, 0, 0, 0), CPU)
    assert out.loss.item() != pytest.approx(plain_dpo.loss.item(), rel=1e-3)


def test_random_condition_reaches_the_run_through_the_text_cache(tmp_path):
    """`prefopt run` with random_condition and the text cache: pairs are swapped at high t, none at low t."""
    path = extra_file(tmp_path, [{"prompt": "5", "neg_prompts": ["6", "7"]}])
    recipe = write_toy_recipe(  # pairs on conditions 0-3 only, so 5-7 are unpaired extra prompts
        tmp_path, pretrain=False, pairs={"source": {"num_conditions": 4}},
        objective={"random_condition": {"prompts": [path], "schedule": "sigmoid", "steepness": 20}},
        train={"max_steps": 12, "checkpoint_every": 0, "text_cache": True})
    code, err = cli("run", recipe)
    assert code == 0, err
    swapped = [row["rand_cond/swapped"] for row in metric_rows(tmp_path / "run")]
    assert len(swapped) == 12 and 0 < sum(swapped) / 12 < 1


# --------------------------------------------------------------------------- prompt dropout


def test_prompt_dropout_empties_a_share_of_prompts():
    rewrite = PromptDropout(0.2)
    n = 20000
    out = rewrite(["0"] * n, ["1"] * n, torch.zeros(n), torch.Generator().manual_seed(0))
    share = out.prompts.count("") / n
    assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    assert set(out.prompts) == {"", "0"} and out.degraded == ["1"] * n and not out.swapped.any()
    assert rewrite.texts() == [""]


@pytest.mark.parametrize("name", ["diffusion_dpo", "diffusion_kto"])
def test_prompt_dropout_reaches_the_encoder(name):
    backbone = toy_backbone()
    seen = []
    encode = backbone.encode_prompts
    # The toy's condition ids have no empty prompt: stand in condition 0 for it.
    backbone.encode_prompts = lambda prompts: seen.extend(prompts) or encode([p or "0" for p in prompts])
    chosen = objective(name, prompt_dropout=0.5)
    FusedStep(backbone, chosen, rewrite=chosen.prompt_rewrite(set()))(toy_batch(32), step_generator(0, 0, 0, 0), CPU)
    assert "" in seen


def test_random_condition_and_prompt_dropout_do_not_combine(tmp_path):
    with pytest.raises(ValidationError, match="cannot be combined"):
        objective("diffusion_dpo", prompt_dropout=0.2, random_condition={"prompts": ["x.jsonl"]})


# --------------------------------------------------------------------------- different noise per side


@pytest.mark.parametrize("name", ["ddspo", "diffusion_dpo", "diffusion_kto"])
def test_independent_noise_draws_one_noise_per_side_at_one_timestep(name):
    backbone = toy_backbone()
    seen = []
    add_noise = backbone.add_noise
    backbone.add_noise = lambda x0, noise, t: seen.append((noise, t)) or add_noise(x0, noise, t)
    out = FusedStep(backbone, objective(name, noise="independent"))(toy_batch(), step_generator(0, 0, 0, 0), CPU)
    (noise_w, t_w), (noise_l, t_l) = seen
    assert torch.equal(t_w, t_l) and not torch.equal(noise_w, noise_l)
    # Student == reference still gives DPO's and DDSPO's ln 2 and KTO's 1/2 (to float rounding).
    assert out.loss.item() == pytest.approx(0.5 if name == "diffusion_kto" else math.log(2), abs=1e-5)
    # The shared-noise run draws exactly what it drew before the option existed: t, then one noise.
    seen.clear()
    FusedStep(backbone, objective(name))(toy_batch(), step_generator(0, 0, 0, 0), CPU)
    generator = step_generator(0, 0, 0, 0)
    backbone.sample_timesteps(6, generator)
    assert torch.equal(seen[0][0], torch.randn(6, 2, generator=generator)) and seen[0][0] is seen[1][0]


# --------------------------------------------------------------------------- timestep sampling (sd / sdxl)


@pytest.fixture(scope="module")
def sd_backbones(tiny_sd):
    from prefopt_backbones.sd import SDBackbone
    from tiny_models import load_backbone

    return {kind: load_backbone(SDBackbone, tiny_sd, timestep_sampling=kind)
            for kind in ("uniform", "linear", "sigmoid")}


def test_uniform_timesteps_are_drawn_as_before(sd_backbones):
    backbone = sd_backbones["uniform"]
    drawn = backbone.sample_timesteps(64, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_nonuniform_timesteps_follow_the_official_density(sd_backbones, kind):
    steps = torch.arange(1000, dtype=torch.float64)
    # ddspo/data.py: linear ∝ linspace(1, 0, T); sigmoid ∝ σ(20 (t/T − 0.7)).
    weights = torch.linspace(1.0, 0.0, 1000, dtype=torch.float64) if kind == "linear" else torch.sigmoid(
        20 * (steps / 1000 - 0.7))
    density = weights / weights.sum()
    n = 40000
    drawn = sd_backbones[kind].sample_timesteps(n, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.long and 0 <= drawn.min() and drawn.max() < 1000
    # Ten bins of 100 steps: each share within 4 standard errors of the density's mass.
    counts = torch.bincount(drawn // 100, minlength=10).double() / n
    mass = density.view(10, 100).sum(dim=1)
    assert torch.all((counts - mass).abs() < 4 * torch.sqrt(mass * (1 - mass) / n) + 1e-9)


# --------------------------------------------------------------------------- linear loss weighting


def test_dpo_linear_weighting_scales_each_pairs_loss_by_t_fraction():
    """Official --loss_weighting linear multiplies each pair's DPO loss by t/(T−1), with or without --cpp."""
    backbone = toy_backbone()
    backbone.student.output[1].weight.data.add_(0.05)
    seen = []
    t_fraction = backbone.t_fraction
    backbone.t_fraction = lambda t: seen.append(t_fraction(t)) or seen[-1]
    weighted = FusedStep(backbone, objective("diffusion_dpo", beta=2000, weighting="linear"))(
        toy_batch(1), step_generator(0, 0, 0, 0), CPU)
    plain = FusedStep(backbone, objective("diffusion_dpo", beta=2000))(toy_batch(1), step_generator(0, 0, 0, 0), CPU)
    assert weighted.loss.item() == pytest.approx(plain.loss.item() * seen[0].item(), rel=1e-6)


# --------------------------------------------------------------------------- under two processes


RUN = r"""
import sys
from prefopt.cli import main
sys.argv = ["prefopt", "run", sys.argv[1]]
main()
"""


@pytest.mark.slow
def test_random_condition_and_independent_noise_under_two_processes(tmp_path):
    """`accelerate launch` of two workers (gloo on the CPU): the text cache holds the extra prompts,
    every rank swaps its own pairs, and the logged swap share is the mean over processes."""
    import subprocess

    from helpers import ENV, two_process_launch

    path = extra_file(tmp_path, [{"prompt": "5", "neg_prompts": ["6", "7"]}, {"prompt": "6", "neg_prompts": ["4"]}])
    recipe = write_toy_recipe(
        tmp_path, pretrain=False, pairs={"source": {"num_conditions": 4}},
        objective={"noise": "independent",
                   "random_condition": {"prompts": [path], "schedule": "sigmoid", "steepness": 20}},
        train={"max_steps": 8, "batch_size": 4, "checkpoint_every": 0, "text_cache": True})
    script = tmp_path / "run.py"
    script.write_text(RUN)
    done = subprocess.run(two_process_launch(str(script), str(recipe)), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metric_rows(tmp_path / "run")
    swapped = [row["rand_cond/swapped"] for row in rows]
    assert len(swapped) == 8 and 0 < sum(swapped) / 8 < 1
    # Mean over 2 processes of 4 pairs each: a multiple of 1/8.
    assert all(abs(s * 8 - round(s * 8)) < 1e-9 for s in swapped)
    (index,) = (tmp_path / "run" / "text_cache").glob("*/index.json")
    assert {"4", "5", "6", "7"} <= set(json.loads(index.read_text())["prompts"])
