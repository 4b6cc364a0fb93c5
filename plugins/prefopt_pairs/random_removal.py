"""Random word removal: the paper's Rand-removal perturbation (Sec. 4.4, Table 3a)."""

from __future__ import annotations

import logging
import random
from typing import ClassVar, Sequence

from pydantic import Field, model_validator

from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt_pairs.common import prompt_rng, require_prompts, row_seed

log = logging.getLogger(__name__)

ATTEMPTS_PER_VARIANT = 20
"""Draws allowed per requested variant before settling for fewer distinct ones.

Short prompts (or prompts with repeated words) have few distinct removals, so
the search for ``variants`` distinct negatives must stop somewhere.
"""


def drop_count(n_words: int, fraction: float) -> int:
    """Words to drop from ``n_words`` for a drawn ``fraction``.

    ``round(fraction * n_words)`` (Python's round, half to even), clamped to
    [1, n_words - 1] so that at least one word goes and at least one stays.
    """
    return min(max(round(fraction * n_words), 1), n_words - 1)


def remove_words(words: Sequence[str], rng: random.Random, min_drop: float, max_drop: float) -> str:
    """One degraded prompt: a random share of ``words`` removed, the rest kept in order."""
    count = drop_count(len(words), rng.uniform(min_drop, max_drop))
    dropped = set(rng.sample(range(len(words)), count))
    return " ".join(word for i, word in enumerate(words) if i not in dropped)


def removal_variants(prompt: str, seed: int, config: "RandomRemoval.Config") -> list[str]:
    """Up to ``config.variants`` distinct degraded prompts of ``prompt``; [] under 2 words.

    The generator is seeded from (seed, prompt), so a prompt gets the same
    negatives wherever it sits in the prompt list.
    """
    words = prompt.split()
    if len(words) < 2:
        return []
    rng = prompt_rng(seed, prompt)
    found: list[str] = []
    for _ in range(config.variants * ATTEMPTS_PER_VARIANT):
        negative = remove_words(words, rng, config.min_drop, config.max_drop)
        if negative not in found:
            found.append(negative)
            if len(found) == config.variants:
                break
    return found


class RandomRemoval(PairSource):
    """Degrade each prompt by dropping a random 40-70% of its words (Rand-removal).

    For a prompt of n >= 2 whitespace words, a share f is drawn uniformly from
    [min_drop, max_drop] and ``drop_count(n, f)`` words are removed at random;
    the others stay in order. Prompts of fewer than 2 words are skipped.
    Negatives depend only on (seed, prompt), not on the prompt's position.
    Each row's ``seed`` is derived from (seed, row index); the builder samples
    the winner from ``prompt`` and the loser from ``negative`` with it.
    """

    name: ClassVar[str] = "random_removal"

    class Config(PluginConfig):
        """How many words random removal drops, and how many variants it makes."""

        min_drop: float = Field(0.4, gt=0, lt=1, description="smallest share of words dropped")
        max_drop: float = Field(0.7, gt=0, lt=1, description="largest share of words dropped")
        variants: int = Field(
            1, ge=1, description="distinct degraded prompts per prompt (fewer when a prompt has fewer)"
        )

        @model_validator(mode="after")
        def _ordered(self) -> "RandomRemoval.Config":
            if self.min_drop > self.max_drop:
                raise ValueError(f"min_drop ({self.min_drop}) must not exceed max_drop ({self.max_drop})")
            return self

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        prompts = require_prompts(prompts, self.name)
        rows: list[PromptPair] = []
        skipped = 0
        for prompt in prompts:
            negatives = removal_variants(prompt, seed, self.config)
            skipped += not negatives
            for negative in negatives:
                rows.append(PromptPair(prompt=prompt, negative=negative, seed=row_seed(seed, len(rows))))
        if skipped:
            log.info("random_removal skipped %d prompt(s) of fewer than 2 words", skipped)
        return rows
