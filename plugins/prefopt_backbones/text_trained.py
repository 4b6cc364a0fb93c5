"""A UNet trained together with its text encoder (the ``sd`` backbone's ``train_text_encoder``).

One module for the engine: accelerate prepares it, the optimizer, gradient
clipping, EMA and checkpoints see both parts' weights, and its forward runs
the text encoder on the prompts' token ids and then the UNet, so gradients
reach the text encoder (the engine encodes prompts without gradients; with
this module "encoding" is only tokenizing) and a DDP wrapper sees one forward.
"""

from __future__ import annotations

from torch import nn


class UNetWithTextEncoder(nn.Module):
    """(x_t, t, input_ids) -> the UNet's prediction, conditioned on the text encoder's last hidden states."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet  # first: its weights' dtype is the module's input dtype (loading.input_dtype)
        self.text_encoder = text_encoder

    def forward(self, x_t, t, input_ids, attention_mask=None, **unet_kwargs):
        # As StableDiffusionPipeline.encode_prompt without clip_skip: the last hidden states.
        embeds = self.text_encoder(input_ids, attention_mask=attention_mask)[0]
        return self.unet(x_t, t, encoder_hidden_states=embeds.to(x_t.dtype), **unet_kwargs)
