"""Per-pair prompt changes drawn each step: random-condition removal and prompt dropout.

Random-condition removal is the official DDSPO code's ``--rand_cond`` (KU-MIIL/DDSPO,
ddspo/data.py and ddspo/adapters/ at its current head): with a probability that
grows with the pair's timestep, the pair's (c, c-) are replaced by an extra
prompt c_e, unrelated to the pair's images, and one of its degraded variants
c_e-. The images stay; the targets become the reference's on c_e and c_e-.
Prompt dropout is the Diffusion-DPO and Diffusion-KTO scripts'
``--proportion_empty_prompts``: the pair's c becomes the empty prompt.

No torch at import (``prefopt validate`` reads the Configs); torch is imported
when a rewrite is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH, jsonl_objects
from prefopt.errors import DataError
from prefopt.interfaces import PluginConfig, PromptRewrite, RewrittenPrompts

# The official schedules' centre: p = 1/2 at t/T = 0.7 for the sigmoid one.
SIGMOID_CENTRE = 0.7


class RandomConditionConfig(PluginConfig):
    """Random-condition removal (official DDSPO ``--rand_cond``)."""

    prompts: list[str] = Field(
        min_length=1,
        description="extra prompt files (official --extra_text_path): JSONL lines "
        '{"prompt": ..., "neg_prompts": [...]}, as the official data_prep/random_removal.py writes them',
        json_schema_extra=RECIPE_PATH,
    )
    schedule: Literal["sigmoid", "exponential", "constant"] = Field(
        "sigmoid",
        description="probability of replacing a pair's prompts at t_fraction τ (official --rand_cond_pt): "
        "sigmoid 1/(1+exp(−λ(τ−0.7))), exponential exp(−λ(1−τ)), constant 1 (official constant_1)",
    )
    steepness: float = Field(20.0, gt=0, description="λ of the schedule (official --rand_cond_lambda, default 20)")


def replace_probability(t_fraction, schedule: str, steepness: float):
    """The per-pair probability of a random-condition swap at ``t_fraction`` (0 clean, 1 noise).

    The official code evaluates it at t/T for DDPM step t of T; prefopt's
    t_fraction is t/(T−1) on sd/sdxl, which moves p by under 0.004.
    """
    import torch

    tau = t_fraction.double()
    if schedule == "sigmoid":
        return torch.sigmoid(steepness * (tau - SIGMOID_CENTRE))
    if schedule == "exponential":
        return torch.exp(-steepness * (1.0 - tau))
    return torch.ones_like(tau)


def read_extra_prompts(paths: Sequence[str], exclude: set[str]) -> list[tuple[str, list[str]]]:
    """(prompt, degraded variants) from the extra prompt files, as the official loader keeps them.

    A line is kept when its prompt is non-empty, not among the training
    prompts (``exclude``), and it has a non-empty list of ``neg_prompts``.
    """
    pool: list[tuple[str, list[str]]] = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"random_condition: extra prompt file not found: {path}")
        for _, item in jsonl_objects(path):
            prompt, degraded = item.get("prompt"), item.get("neg_prompts")
            if (isinstance(prompt, str) and prompt and prompt not in exclude and isinstance(degraded, list)
                    and degraded and all(isinstance(n, str) for n in degraded)):
                pool.append((prompt, list(degraded)))
    if not pool:
        raise DataError(
            f"random_condition: no usable extra prompts in {', '.join(paths)} "
            '(each line needs "prompt" and a non-empty "neg_prompts" list, and a prompt not in the pair data)'
        )
    return pool


class RandomCondition(PromptRewrite):
    """Swap a pair's (c, c-) for an extra prompt and one of its variants, with p(t)."""

    def __init__(self, config: RandomConditionConfig, train_prompts: set[str]):
        self.config = config
        self.pool = read_extra_prompts(config.prompts, train_prompts)

    def texts(self) -> list[str]:
        return [text for prompt, degraded in self.pool for text in (prompt, *degraded)]

    def __call__(self, prompts, degraded, t_fraction, generator) -> RewrittenPrompts:
        import torch

        n = len(prompts)
        # Every draw is made for every pair, hit or not, so the draws of a step
        # do not depend on how many pairs were swapped.
        hit = torch.rand(n, generator=generator, dtype=torch.float64) < replace_probability(
            t_fraction, self.config.schedule, self.config.steepness)
        which = torch.randint(len(self.pool), (n,), generator=generator).tolist()
        variant = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        prompts, degraded = list(prompts), list(degraded)
        for i in hit.nonzero().flatten().tolist():
            extra, extra_degraded = self.pool[which[i]]
            prompts[i] = extra
            degraded[i] = extra_degraded[min(int(variant[i] * len(extra_degraded)), len(extra_degraded) - 1)]
        return RewrittenPrompts(prompts, degraded, hit)


class PromptDropout(PromptRewrite):
    """Replace a pair's c by the empty prompt with a fixed probability (``--proportion_empty_prompts``)."""

    def __init__(self, probability: float):
        self.probability = probability

    def texts(self) -> list[str]:
        return [""]

    def __call__(self, prompts, degraded, t_fraction, generator) -> RewrittenPrompts:
        import torch

        n = len(prompts)
        drop = (torch.rand(n, generator=generator, dtype=torch.float64) < self.probability).tolist()
        kept = ["" if dropped else prompt for prompt, dropped in zip(prompts, drop)]
        return RewrittenPrompts(kept, list(degraded), torch.zeros(n, dtype=torch.bool))


def check_one_rewrite(random_condition, prompt_dropout: float) -> None:
    """Neither official script combines the two; say so instead of inventing an order."""
    if random_condition is not None and prompt_dropout > 0:
        raise ValueError("random_condition and prompt_dropout cannot be combined (no official run does)")
