"""The fused DDSPO step on the ``sd`` backbone: one reference call, one student call, one text call.

The UNet and the CLIP text encoder are patched at class level to record every
call, so the counts are those of the real models inside a real step.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_backbone, objective, pair_batch

from prefopt.engine.step import FusedStep, PairBatch
from prefopt_backbones.sd import SDBackbone


def _adapters_on(unet) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    return bool(layers) and not any(layer.disable_adapters for layer in layers)


@pytest.fixture
def recorded(monkeypatch):
    """Every UNet and text-encoder call: (module, batch size, grad enabled, adapters on)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    calls = {"unet": [], "text": []}
    unet_forward, text_forward = UNet2DConditionModel.forward, CLIPTextModel.forward

    def record_unet(self, sample, *args, **kwargs):
        calls["unet"].append((self, sample.shape[0], torch.is_grad_enabled(), _adapters_on(self)))
        return unet_forward(self, sample, *args, **kwargs)

    def record_text(self, input_ids=None, *args, **kwargs):
        calls["text"].append(input_ids.shape[0])
        return text_forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", record_unet)
    monkeypatch.setattr(CLIPTextModel, "forward", record_text)
    return calls


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_ddspo_step_makes_one_reference_and_one_student_call(tiny_sd, recorded, mode):
    backbone = load_backbone(SDBackbone, tiny_sd, mode)
    backbone.set_trainable_module(backbone.trainable_module())
    student = backbone.trainable_module()
    # Repeated prompts, and a negative that is also a prompt: 4 unique texts for 2·4 slots.
    batch = pair_batch(backbone)
    batch = PairBatch(
        torch.cat([batch.x0_w, batch.x0_w[:1]]), torch.cat([batch.x0_l, batch.x0_l[:1]]),
        ["a red car", "a cat", "a red car", "a dog"], ["a car", "a red car", "a car", "a"],
    )
    n = len(batch)
    fused = FusedStep(backbone, objective("ddspo"))
    recorded["unet"].clear()
    recorded["text"].clear()

    out = fused(batch, torch.Generator().manual_seed(0), torch.device("cpu"))
    out.loss.backward()

    assert recorded["text"] == [5]  # a red car, a cat, a dog, a car, a: each encoded once
    reference_calls = [c for c in recorded["unet"] if not c[2]]
    student_calls = [c for c in recorded["unet"] if c[2]]
    # ε_ref(x_t^w, c), ε_ref(x_t^l, c-), ε_ref(x_t^l, c) in one no-grad call.
    assert [c[1] for c in reference_calls] == [3 * n]
    # ε_θ(x_t^w, c), ε_θ(x_t^l, c) in one call with grad.
    assert [c[1] for c in student_calls] == [2 * n]
    ref_module, _, _, ref_adapters_on = reference_calls[0]
    student_module, _, _, student_adapters_on = student_calls[0]
    assert student_module is student and student_adapters_on == (mode == "lora")
    if mode == "lora":  # the same UNet, its adapters off for the reference
        assert ref_module is student and not ref_adapters_on
    else:  # a separate frozen copy
        assert ref_module is not student and not any(p.requires_grad for p in ref_module.parameters())


def test_every_step_repeats_the_same_call_pattern(tiny_sd, recorded):
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    backbone.set_trainable_module(backbone.trainable_module())
    fused = FusedStep(backbone, objective("ddspo"))
    batch = pair_batch(backbone)
    n = len(batch)
    for step in range(3):
        recorded["unet"].clear()
        recorded["text"].clear()
        fused(batch, torch.Generator().manual_seed(step), torch.device("cpu")).loss.backward()
        assert sorted(c[1] for c in recorded["unet"]) == [2 * n, 3 * n]
        assert recorded["text"] == [2 * n]  # the shared prompts and negatives are all distinct
