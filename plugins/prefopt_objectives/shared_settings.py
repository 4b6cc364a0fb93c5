"""Config fields that Diffusion-DPO and Diffusion-KTO share, written once."""

from __future__ import annotations

from pydantic import Field

from prefopt.interfaces import PluginConfig
from prefopt_objectives.predictions import PairNoise, noise_field


class NoiseAndDropout(PluginConfig):
    """The pair's noise draw and empty-prompt dropout, as both methods' published training scripts offer them."""

    noise: PairNoise = noise_field()
    prompt_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of pairs trained on the empty prompt, drawn per step (the Diffusion-DPO and "
        "Diffusion-KTO scripts' --proportion_empty_prompts: 0.2)",
    )
