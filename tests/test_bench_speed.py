"""Speed settings change the speed, not the numbers: train.compile, train.channels_last, train.optimizer_impl."""

from __future__ import annotations

import pytest
import torch
from tiny_models import load_backbone, objective, pair_batch

from prefopt.engine.speed import compile_repeated_blocks, optimizer_kernel_options, to_channels_last
from prefopt.engine.step import FusedStep
from prefopt_backbones.sd import SDBackbone


def _loss_and_grads(backbone):
    params = list(backbone.trainable_parameters())
    for p in params:
        p.grad = None
    out = FusedStep(backbone, objective("ddspo"))(pair_batch(backbone), torch.Generator().manual_seed(5),
                                                 torch.device("cpu"))
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in params]


def _sd(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, "lora", finetune={"init": "gaussian"})
    backbone.set_trainable_module(backbone.trainable_module())
    return backbone


def _compiled_matches_eager(tiny_sd, backend):
    backbone = _sd(tiny_sd)
    eager_loss, eager_grads = _loss_and_grads(backbone)
    # The tiny UNet: 4 attention blocks (BasicTransformerBlock: down 1, mid 1, up 2) and 8 ResNet blocks.
    assert compile_repeated_blocks(backbone.trainable_module(), backend) == 12
    compiled_loss, compiled_grads = _loss_and_grads(backbone)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-6)
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # one trace per block shape and grad mode: ~20 traces, minutes on a loaded 2-core machine
def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_sd):
    """Traced by dynamo and AOT autograd (the graphs train.compile runs), without kernel generation."""
    _compiled_matches_eager(tiny_sd, "aot_eager")


@pytest.mark.slow  # inductor generates and builds C++ kernels: many minutes on a loaded 2-core machine
def test_inductor_compiled_blocks_give_the_same_loss_and_gradients(tiny_sd):
    _compiled_matches_eager(tiny_sd, "inductor")


def test_channels_last_gives_the_same_loss(tiny_sd):
    backbone = _sd(tiny_sd)
    loss, grads = _loss_and_grads(backbone)
    assert to_channels_last(backbone.trainable_module())
    conv = next(m for m in backbone.trainable_module().modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    loss_cl, grads_cl = _loss_and_grads(backbone)
    torch.testing.assert_close(loss_cl, loss, rtol=1e-4, atol=1e-6)
    for a, b in zip(grads_cl, grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("impl", ["foreach", "fused", "for-loop"])
def test_adamw_kernels_take_the_same_step(impl):
    def stepped(options):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.01, **options)
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p) * p.detach().sum()
            optimizer.step()
        return params, optimizer

    reference, _ = stepped({"foreach": False})
    params, optimizer = stepped(optimizer_kernel_options(impl))
    assert optimizer.defaults[impl if impl != "for-loop" else "foreach"] is (impl != "for-loop")
    for a, b in zip(params, reference):
        torch.testing.assert_close(a, b)
