"""Every shipped recipe reproduces the official run it cites, value by value.

The tables below are the official scripts' values, read from their sources:

* KU-MIIL/DDSPO at its current head f8e47a5: scripts/train_ddspo.sh (sd15, sdxl),
  scripts/train_ddspo_sana.sh, ddspo/args.py defaults, ddspo/adapters/*.py,
  data_prep/random_removal.py and ddspo/prepare_latents.py. (Its commit 0e9dfc6
  used beta 1000 for SANA; the head uses 2000.)
* SalesforceAIResearch/DiffusionDPO: launchers/sd15.sh and train.py defaults.
* jacklishufan/diffusion-kto: exps/example.sh, config.json, train_kto_sd_v1.5.py defaults.

Each recipe is read through the real recipe loader; its learning rate through
``TrainConfig.effective_lr`` (the trainer's) at the official run's number of
processes, its schedule through the trainer's ``make_scheduler``, its optimizer
through ``make_optimizer``. A drift in a recipe or a default fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefopt.recipe import load_recipe
from prefopt.registry import PluginRegistry

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# The optimizer settings all three official trainers share (argparse defaults).
ADAMW = {"optimizer": "adamw", "adam_betas": (0.9, 0.999), "weight_decay": 0.01, "max_grad_norm": 1.0}

# The DDSPO SD-family script: scripts/train_ddspo.sh (batch 8; sd15: GA 16, 200 steps; sdxl: GA 64, 500
# steps, --loss_weighting linear), lr 2.5e-9 --scale_lr, constant_with_warmup 100, beta 16000, fp16, --cpp.
# "Effective batch 2048" fixes the number of processes: 2048 / (8 × GA).
DDSPO_SD15 = {
    "per_process": {"batch": 8, "grad_accum": 16}, "processes": 16,
    "lr": 2.5e-9, "scale_lr": True, "schedule": "constant_with_warmup", "warmup": 100, "steps": 200,
    "mixed_precision": "fp16", "checkpoint_every": 50, **ADAMW,
    "objective": {"name": "ddspo", "beta": 16000, "weighting": "none", "noise": "shared",
                  "random_condition": None, "winner_policy": None},
    "backbone": {"finetune.mode": "full", "timestep_sampling": "uniform", "resolution": 512,
                 "num_inference_steps": 25, "guidance_scale": 7.5},
    # data_prep/random_removal.py: max(1, int(uniform(0.4, 0.7)·n)) words, 5 draws; prepare_latents.py:
    # one pair per prompt, c- = random.choice(variants); prompts under 2 words skipped.
    "pairs": {"name": "random_removal", "min_drop": 0.4, "max_drop": 0.7, "draws": 5, "variants": 1},
    "min_words": 2,
}
DDSPO_SDXL = {
    **DDSPO_SD15,
    "per_process": {"batch": 8, "grad_accum": 64}, "processes": 4, "steps": 500,
    "objective": {**DDSPO_SD15["objective"], "weighting": "linear"},
    "backbone": {"finetune.mode": "full", "gradient_checkpointing": True, "timestep_sampling": "uniform",
                 "resolution": 1024, "num_inference_steps": 25, "guidance_scale": 7.5},
}
# scripts/train_ddspo_sana.sh + adapters/sana.py: LoRA r128 (alpha = rank, gaussian init, to_k/to_q/to_v),
# batch 4 × GA 256 ("effective batch 2048": 2 processes), lr 4e-8 --scale_lr, constant, no warmup,
# beta 2000, fp32, --weighting_scheme none, 500 steps; Gemma with the complex human instruction
# (args.py default), 300 tokens; unshifted scheduler σ table; target noise − x0.
DDSPO_SANA = {
    "per_process": {"batch": 4, "grad_accum": 256}, "processes": 2,
    "lr": 4e-8, "scale_lr": True, "schedule": "constant", "warmup": 0, "steps": 500,
    "mixed_precision": "no", "allow_tf32": False, "checkpoint_every": 50, **ADAMW,
    "objective": {"name": "ddspo", "beta": 2000, "weighting": "none", "noise": "shared",
                  "random_condition": None, "winner_policy": None},
    "backbone": {"pretrained": "Efficient-Large-Model/Sana_600M_1024px_diffusers",
                 "finetune.mode": "lora", "finetune.rank": 128, "finetune.alpha": 128,
                 "finetune.target_modules": ["to_k", "to_q", "to_v"], "finetune.init": "gaussian",
                 "denoiser_dtype": "float32", "complex_human_instruction": True, "max_sequence_length": 300,
                 "shift": None, "dynamic_shift": False, "timestep_density": "uniform", "loss_weighting": "none",
                 "precondition_outputs": False, "resolution": 1024, "num_inference_steps": 25,
                 "guidance_scale": 7.5},
    "pairs": DDSPO_SD15["pairs"], "min_words": 2,
}
# DiffusionDPO launchers/sd15.sh: batch 1 × GA 128 ("Paper used 2048": 16 processes), 2000 steps,
# constant_with_warmup 500, lr 1e-8 --scale_lr, beta 5000; train.py: fp16, --proportion_empty_prompts 0.2,
# tied pairs dropped, resolution 512, one noise and timestep per pair.
DIFFUSION_DPO = {
    "per_process": {"batch": 1, "grad_accum": 128}, "processes": 16,
    "lr": 1e-8, "scale_lr": True, "schedule": "constant_with_warmup", "warmup": 500, "steps": 2000,
    "mixed_precision": "fp16", "checkpoint_every": 500, **ADAMW,
    "objective": {"name": "diffusion_dpo", "beta": 5000, "weighting": "none", "noise": "shared", "prompt_dropout": 0.2,
                  "random_condition": None},
    "backbone": {"finetune.mode": "full", "timestep_sampling": "uniform", "resolution": 512},
    "pairs": {"name": "pickapic", "skip_ties": True},
}
# diffusion-kto exps/example.sh: 4 processes × 2 images × GA 1, lr 1e-7 unscaled, constant_with_warmup 200,
# 20000 steps, fp16, 8-bit AdamW, gradient checkpointing, full UNet; train script: beta 1000, λ_D = λ_U = 1,
# --proportion_empty_prompts 0.2, weight decay 0.01, one noise draw per image; config.json: gradient clipping 1.0.
# A prefopt pair gives one desirable and one undesirable image, so images = 2 × pairs.
DIFFUSION_KTO = {
    "per_process": {"batch": 2, "grad_accum": 1}, "processes": 4, "images_per_pair": 2,
    "lr": 1e-7, "scale_lr": False, "schedule": "constant_with_warmup", "warmup": 200, "steps": 20000,
    "mixed_precision": "fp16", "checkpoint_every": 5000, **ADAMW, "optimizer": "adamw8bit",
    "objective": {"name": "diffusion_kto", "beta": 1000, "lambda_desirable": 1.0, "lambda_undesirable": 1.0,
                  "noise": "independent", "prompt_dropout": 0.2},
    "backbone": {"finetune.mode": "full", "gradient_checkpointing": True, "timestep_sampling": "uniform",
                 "resolution": 512},
    "pairs": {"name": "pickapic", "skip_ties": True},
}

# scripts/train_ddspo_lora_target.sh, step 1 (ddspo/train_lora_target.py): LoRA rank 4, alpha 4 on
# to_q/to_k/to_v/to_out.0, peft's default init, lr 1e-4 unscaled, torch AdamW defaults, batch 1 × GA 2048 on
# one GPU (NUM_GPUS default), 300 steps, constant_with_warmup with 0 warmup, fp16; plain ε-MSE on c.
DDCPP_POLICIES = {
    "per_process": {"batch": 1, "grad_accum": 2048}, "processes": 1,
    "lr": 1e-4, "scale_lr": False, "schedule": "constant_with_warmup", "warmup": 0, "steps": 300,
    "mixed_precision": "fp16", "checkpoint_every": 50, **ADAMW,
    "objective": {"name": "denoise", "side": "winner"},
    "backbone": {"pretrained": "CompVis/stable-diffusion-v1-4", "finetune.mode": "lora", "finetune.rank": 4,
                 "finetune.alpha": 4, "finetune.target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
                 "finetune.init": "kaiming", "timestep_sampling": "uniform", "resolution": 512},
    "pairs": {"name": "pickapic", "skip_ties": True},
}
# Step 2 (ddspo/train.py --cpp --lora_path): the SD1.x run with beta 8000, batch 1 × GA 2048, 100 steps.
DDCPP = {
    **DDSPO_SD15,
    "per_process": {"batch": 1, "grad_accum": 2048}, "processes": 1, "steps": 100,
    "objective": {"name": "ddspo", "beta": 8000, "weighting": "none", "noise": "shared", "random_condition": None},
    "backbone": {"pretrained": "CompVis/stable-diffusion-v1-4", "finetune.mode": "full",
                 "timestep_sampling": "uniform", "resolution": 512},
    "pairs": {"name": "pickapic", "skip_ties": True},
}
del DDCPP["min_words"]

OFFICIAL = {
    "sd14_ddcpp_policies": DDCPP_POLICIES,
    "sd14_ddcpp": DDCPP,
    "sd14_ddspo": {**DDSPO_SD15, "backbone": {**DDSPO_SD15["backbone"],
                                               "pretrained": "CompVis/stable-diffusion-v1-4"}},
    # The official code has neither of these two; they take its SD1.x run's training values.
    "sd14_ddspo_unpaired": {**DDSPO_SD15, "pairs": {"name": "not_paired", "perturb.min_drop": 0.4,
                                                     "perturb.max_drop": 0.7, "perturb.draws": 5,
                                                     "perturb.variants": 1}},
    "sd15_ddspo_aesthetic": {**DDSPO_SD15,
                             # data_prep/llama_negatives.py defaults
                             "pairs": {"name": "llm_rewrite", "model": "meta-llama/Meta-Llama-3-8B-Instruct",
                                       "temperature": 0.7, "max_new_tokens": 256}},
    "sdxl_ddspo": {**DDSPO_SDXL, "backbone": {**DDSPO_SDXL["backbone"],
                                               "pretrained": "stabilityai/stable-diffusion-xl-base-1.0"}},
    "sana_ddspo": DDSPO_SANA,
    "sd15_diffusion_dpo": DIFFUSION_DPO,
    "sd15_diffusion_kto": DIFFUSION_KTO,
}


def official_lr(run: dict) -> float:
    """The official trainers' --scale_lr: lr × train_batch_size × gradient_accumulation_steps × num_processes."""
    per = run["per_process"]
    return run["lr"] * per["batch"] * per["grad_accum"] * run["processes"] if run["scale_lr"] else run["lr"]


def lookup(section: dict, dotted: str):
    node = section
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def registry():
    return PluginRegistry()


def test_every_shipped_non_toy_recipe_has_an_official_row():
    shipped = {p.stem for p in RECIPES.glob("*.yaml") if p.stem.startswith(("sd", "sana"))}
    # The flow-matching families' recipes (sd3, sd35, flux) carry their own sources and tests.
    assert {name for name in shipped if not name.startswith(("sd3", "flux"))} == set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_matches_the_official_run(name, registry):
    run = OFFICIAL[name]
    resolved = load_recipe(RECIPES / f"{name}.yaml", registry)
    data = resolved.to_dict()
    train = resolved.recipe.train
    per = run["per_process"]
    units = run.get("images_per_pair", 1)

    # Data per optimizer step and the learning rate, at the official run's process count.
    official_batch = per["batch"] * per["grad_accum"] * run["processes"]
    assert train.effective_batch(run["processes"]) * units == official_batch
    assert train.batch_size * train.grad_accum * units == per["batch"] * per["grad_accum"]
    assert train.scale_lr == run["scale_lr"]
    assert train.effective_lr(run["processes"]) == pytest.approx(official_lr(run), rel=1e-12)

    for key in ("optimizer", "adam_betas", "weight_decay", "max_grad_norm", "mixed_precision"):
        assert getattr(train, key) == run[key], key
    if "allow_tf32" in run:  # where it matters: the official fp32 run, which does not pass --allow_tf32
        assert train.allow_tf32 == run["allow_tf32"]
    assert (train.max_steps, train.warmup_steps, train.checkpoint_every) == (
        run["steps"], run["warmup"], run["checkpoint_every"])

    for key, value in run["objective"].items():
        assert data["objective"].get(key) == value, f"objective.{key}"
    for key, value in run["backbone"].items():
        assert lookup(data["backbone"], key) == value, f"backbone.{key}"
    for key, value in run["pairs"].items():
        assert lookup(data["pairs"]["source"], key) == value, f"pairs.source.{key}"
    if "min_words" in run:
        assert data["pairs"]["prompts"]["min_words"] == run["min_words"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_schedule_is_the_official_lr_curve(name, registry):
    """The trainer's schedule gives the lr of diffusers' schedule the official script names, step by step.

    The official scripts build it with warmup and length × num_processes and let accelerate step it
    num_processes times per optimizer step: per optimizer step, the schedule built here.
    """
    from diffusers.optimization import get_scheduler

    from prefopt.engine.trainer import make_scheduler

    run = OFFICIAL[name]
    train = load_recipe(RECIPES / f"{name}.yaml", registry).recipe.train

    def curve(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=official_lr(run))
        scheduler = make(optimizer)
        lrs = []
        for _ in range(run["warmup"] + 3):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return lrs

    ours = curve(lambda opt: make_scheduler(train, opt))
    theirs = curve(lambda opt: get_scheduler(run["schedule"], opt, num_warmup_steps=run["warmup"],
                                             num_training_steps=run["steps"]))
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, run in OFFICIAL.items() if run["optimizer"] == "adamw"))
def test_recipe_optimizer_is_the_official_adamw(name, registry):
    from prefopt.engine.trainer import make_optimizer

    run = OFFICIAL[name]
    train = load_recipe(RECIPES / f"{name}.yaml", registry).recipe.train
    optimizer = make_optimizer(train, [torch.nn.Parameter(torch.zeros(1))], lr=train.effective_lr(run["processes"]))
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"], group["eps"]) == ((0.9, 0.999), 0.01, 1e-8)
    assert group["lr"] == pytest.approx(official_lr(run), rel=1e-12)


def test_sana_lora_learning_rate_is_the_scaled_one(registry):
    """The known drift: lr 4e-8 unscaled would train the SANA LoRA 2048× slower than the official run."""
    train = load_recipe(RECIPES / "sana_ddspo.yaml", registry).recipe.train
    assert train.effective_lr(2) == pytest.approx(4e-8 * 2048)
    assert train.effective_lr(1) == pytest.approx(4e-8 * 1024)  # per-process values as the script: × processes


def test_ddcpp_stages_share_pairs_and_hand_over_the_policies(registry):
    """Stage 2 reads the pairs stage 1 trained on, and the two policies its documented runs write."""
    policies = load_recipe(RECIPES / "sd14_ddcpp_policies.yaml", registry)
    loser = load_recipe(RECIPES / "sd14_ddcpp_policies.yaml", registry,
                        ["objective.side=loser", "output_dir=runs/sd14_ddcpp_policy_l"])
    ddcpp = load_recipe(RECIPES / "sd14_ddcpp.yaml", registry)
    objective = ddcpp.to_dict()["objective"]
    # The policies are files stage 2 reads (found from the recipe's folder); the runs that write
    # them are run from the project root (output_dir is from the working directory).
    root = RECIPES.parent.resolve()
    assert objective["winner_policy"] == str(root / policies.recipe.output_dir / "final")
    assert objective["loser_policy"] == str(root / loser.recipe.output_dir / "final")
    assert loser.to_dict()["objective"]["side"] == "loser"
    assert policies.recipe.pairs.dir == ddcpp.recipe.pairs.dir is not None
    assert "objective.side=loser output_dir=runs/sd14_ddcpp_policy_l" in (RECIPES / "sd14_ddcpp_policies.yaml").read_text()


def test_defaults_match_the_official_argparse_defaults():
    from prefopt.recipe import TrainConfig
    from prefopt_pairs.random_removal import RandomRemoval

    train = TrainConfig()
    assert (train.adam_betas, train.weight_decay, train.max_grad_norm) == ((0.9, 0.999), 0.01, 1.0)
    removal = RandomRemoval.Config()
    assert (removal.min_drop, removal.max_drop, removal.draws, removal.variants) == (0.4, 0.7, 5, 1)
