"""Min-SNR-γ loss weighting of the ``sd`` / ``sdxl`` backbones (Hang et al. 2023)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import check_training_step, load_backbone

from prefopt.errors import RecipeError
from prefopt_backbones.sd import SDBackbone
from prefopt_backbones.sdxl import SDXLBackbone

# SD's scaled_linear schedule (β from 0.00085 to 0.012 over 1000 steps):
# SNR(t) = ᾱ_t / (1 − ᾱ_t) at t = 0, 100, 500 is 1175.44, 8.45387, 0.381850.
T = torch.tensor([0, 100, 500])
# γ = 5. ε: min(SNR, γ)/SNR = 5/1175.44, 5/8.45387, 1.
EPSILON_WEIGHTS = torch.tensor([4.25372e-3, 0.591446, 1.0])
# v: min(SNR, γ)/(SNR + 1) = 5/1176.44, 5/9.45387, 0.381850/1.381850 (= ᾱ_500 = 0.276332).
V_WEIGHTS = torch.tensor([4.25011e-3, 0.528884, 0.276332])


def test_min_snr_epsilon_weights(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, loss_weighting="min_snr")
    assert torch.allclose(backbone.loss_weight(T), EPSILON_WEIGHTS, rtol=1e-4)


def test_min_snr_v_prediction_weights(tiny_sd_v):
    backbone = load_backbone(SDBackbone, tiny_sd_v, loss_weighting="min_snr")
    assert torch.allclose(backbone.loss_weight(T), V_WEIGHTS, rtol=1e-4)


def test_gamma_is_a_setting(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, loss_weighting="min_snr", snr_gamma=1.0)
    # γ = 1: SNR 1175.44 and 8.45387 are capped at 1; SNR 0.381850 is below it (weight 1).
    expected = torch.tensor([1 / 1175.44, 1 / 8.45387, 1.0])
    assert torch.allclose(backbone.loss_weight(T), expected, rtol=1e-4)


def test_zero_terminal_snr_epsilon_weight_is_its_limit(tiny_sd):
    from diffusers import DDPMScheduler

    backbone = load_backbone(SDBackbone, tiny_sd, loss_weighting="min_snr")
    backbone._noise = DDPMScheduler.from_config(backbone._noise.config, rescale_betas_zero_snr=True)
    weight = backbone.loss_weight(torch.tensor([999]))
    assert torch.equal(weight, torch.ones(1))  # min(SNR, γ)/SNR -> 1 as SNR -> 0, not 0/0


def test_default_is_unweighted(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd)
    assert torch.equal(backbone.loss_weight(T), torch.ones(3))
    assert backbone.describe()["forward_process"]["loss_weighting"] == "none"


def test_sdxl_has_min_snr(tiny_sdxl):
    backbone = load_backbone(SDXLBackbone, tiny_sdxl, loss_weighting="min_snr")
    assert torch.allclose(backbone.loss_weight(T), EPSILON_WEIGHTS, rtol=1e-4)
    check_training_step(backbone, "ddspo")


def test_weight_reaches_the_loss(tiny_sd):
    """The objective sees the backbone's weight: the same batch gives another loss."""
    from prefopt.engine.step import FusedStep
    from prefopt_objectives.diffusion_dpo import DiffusionDPO
    from tiny_models import pair_batch

    losses = {}
    for weighting in ("none", "min_snr"):
        backbone = load_backbone(SDBackbone, tiny_sd, loss_weighting=weighting)
        # A non-zero adapter, so student and reference differ and the loss is not ln 2.
        for name, param in backbone.trainable_module().named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(1))
        step = FusedStep(backbone, DiffusionDPO(DiffusionDPO.Config(beta=5000)))
        out = step(pair_batch(backbone), torch.Generator().manual_seed(0), torch.device("cpu"))
        losses[weighting] = float(out.loss.detach())
    assert losses["none"] != pytest.approx(losses["min_snr"], rel=1e-3)


def test_recipe_rejects_unknown_weighting():
    from prefopt.recipe import resolve
    from prefopt.registry import PluginRegistry

    data = {
        "backbone": {"name": "sd", "loss_weighting": "min_snr", "snr_gamma": 0},
        "pairs": {"source": {"name": "random_removal"}},
        "objective": {"name": "ddspo"},
    }
    with pytest.raises(RecipeError, match="snr_gamma"):
        resolve(data, PluginRegistry())
