"""What training leaves idle leaves the device, and comes back when needed.

Pairs are latents, so the VAE is idle during training; with the text cache so
are the text encoders; a full fine-tune whose objective asks for no reference
prediction holds no frozen copy. On this CPU machine idle modules are freed
(on an accelerator they move to host memory); here each comes back, reloaded
from the pretrained files, bit for bit what a backbone that never let it go
computes.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import PROMPTS, load_backbone, objective, pair_batch, probe

from prefopt.engine.step import FusedStep
from prefopt.interfaces import REFERENCE, STUDENT
from prefopt_backbones.sd import SDBackbone


def sample(backbone, source=REFERENCE):
    return backbone.sample(PROMPTS[:2], [3, 4], source=source)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_released_modules_come_back_unchanged(tiny_sd, mode):
    kept = load_backbone(SDBackbone, tiny_sd, mode)
    released = load_backbone(SDBackbone, tiny_sd, mode)
    expected = {"cond": kept.encode_prompts(PROMPTS), "samples": sample(kept), "reference": probe(kept, REFERENCE)}
    images = kept.decode(expected["samples"])

    released.release_idle({STUDENT}, text_cached=True)
    assert released.modules["vae"] is None and released.modules["text_encoder"] is None
    assert released._reference_module is (released.trainable_module() if mode == "lora" else None)
    assert released._pipelines == []  # nothing still holds the freed modules

    # Each use brings back what it needs, and only that.
    cond = released.encode_prompts(PROMPTS)
    assert released.modules["text_encoder"] is not None and released.modules["vae"] is None
    assert all(torch.equal(cond[key], expected["cond"][key]) for key in cond)
    assert torch.equal(probe(released, REFERENCE), expected["reference"])
    assert torch.equal(sample(released), expected["samples"])
    assert released.modules["vae"] is not None
    decoded = released.decode(expected["samples"])
    assert [list(a.getdata()) for a in decoded] == [list(b.getdata()) for b in images]


def test_text_encoders_stay_without_the_text_cache(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    backbone.release_idle({STUDENT, REFERENCE}, text_cached=False)
    assert backbone.modules["vae"] is None and backbone.modules["text_encoder"] is not None


def test_full_finetune_loads_a_reference_only_when_asked(tiny_sd):
    """``denoise`` asks for the student alone: no frozen copy; DDSPO's first step loads the pretrained one."""
    backbone = load_backbone(SDBackbone, tiny_sd, "full")
    backbone.set_trainable_module(backbone.trainable_module())
    assert backbone._reference_module is None
    generator = torch.Generator().manual_seed(0)
    FusedStep(backbone, objective("denoise"))(pair_batch(backbone), generator, torch.device("cpu"))
    assert backbone._reference_module is None

    out = FusedStep(backbone, objective("ddspo"))(pair_batch(backbone), generator, torch.device("cpu"))
    assert backbone._reference_module is not None and backbone._reference_module is not backbone.trainable_module()
    assert float(out.loss) == pytest.approx(math.log(2), abs=1e-5)  # reference == untrained student (batch-size-dependent kernels: ~1e-6)

    backbone.release_idle({STUDENT}, text_cached=False)  # a stage that no longer needs it frees it
    assert backbone._reference_module is None


class Wrapper(torch.nn.Module):
    """Stands in for accelerate's DDP / FSDP wrapper: counts the forwards that go through it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_lora_reference_goes_through_the_wrapper(tiny_sd):
    """A sharded module gathers its weights in the wrapper's forward: the reference must not bypass it."""
    backbone = load_backbone(SDBackbone, tiny_sd, "lora")
    expected = probe(backbone, REFERENCE)
    wrapper = Wrapper(backbone.trainable_module())
    backbone.set_trainable_module(wrapper)
    assert torch.equal(probe(backbone, REFERENCE), expected)
    assert wrapper.calls == 1
    probe(backbone, STUDENT)
    assert wrapper.calls == 2
