"""Random word removal: the paper's Rand-removal perturbation (Sec. 4.4, Table 3a).

The rule is the official DDSPO code's (KU-MIIL/DDSPO, data_prep/random_removal.py
and ddspo/prepare_latents.py at its current head): each prompt of at least two
whitespace words gets up to 5 distinct degraded variants, each from dropping
max(1, floor(f·n)) of its n words for a share f drawn uniformly from
[0.4, 0.7]; one image pair is made per prompt, its c- drawn uniformly from
those variants.
"""

from __future__ import annotations

import logging
import random
from typing import ClassVar, Sequence

from pydantic import Field, model_validator

from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt_pairs.common import prompt_rng, require_prompts, row_seed

log = logging.getLogger(__name__)


def drop_count(n_words: int, fraction: float) -> int:
    """Words to drop from ``n_words`` for a drawn ``fraction``: max(1, floor(fraction · n_words)).

    As the official code (``max(1, int(ratio * len(words)))``). For n ≥ 2 and
    a fraction below 1 this is at most n − 1, so at least one word stays.
    """
    return max(1, int(fraction * n_words))


def remove_words(words: Sequence[str], rng: random.Random, min_drop: float, max_drop: float) -> str:
    """One degraded prompt: a random share of ``words`` removed, the rest kept in order."""
    count = drop_count(len(words), rng.uniform(min_drop, max_drop))
    dropped = set(rng.sample(range(len(words)), count))
    return " ".join(word for i, word in enumerate(words) if i not in dropped)


def removal_candidates(prompt: str, rng: random.Random, config: "RandomRemoval.Config") -> list[str]:
    """The distinct degraded prompts from ``config.draws`` removals, in the order first drawn."""
    words = prompt.split()
    found: list[str] = []
    for _ in range(config.draws):
        negative = remove_words(words, rng, config.min_drop, config.max_drop)
        if negative not in found:
            found.append(negative)
    return found


def removal_variants(prompt: str, seed: int, config: "RandomRemoval.Config") -> list[str]:
    """The c- of each pair made from ``prompt``: ``config.variants`` distinct candidates
    drawn uniformly (fewer when it has fewer); [] under 2 words.

    The generator is seeded from (seed, prompt), so a prompt gets the same
    negatives wherever it sits in the prompt list.
    """
    if len(prompt.split()) < 2:
        return []
    rng = prompt_rng(seed, prompt)
    candidates = removal_candidates(prompt, rng, config)
    return rng.sample(candidates, min(config.variants, len(candidates)))


class RandomRemoval(PairSource):
    """Degrade each prompt by dropping a random 40-70% of its words (Rand-removal).

    For a prompt of n >= 2 whitespace words, ``draws`` times a share f is
    drawn uniformly from [min_drop, max_drop] and ``drop_count(n, f)`` =
    max(1, floor(f·n)) words are removed at random, the others staying in
    order; the distinct results are the prompt's candidates (official: 5
    draws, so up to 5 variants). Each of the prompt's ``variants`` pairs
    (official: 1) takes a different candidate, drawn uniformly. Prompts of
    fewer than 2 words are skipped. Negatives depend only on (seed, prompt),
    not on the prompt's position. Each row's ``seed`` is derived from (seed,
    row index); the builder samples the winner from ``prompt`` and the loser
    from ``negative`` with it.
    """

    name: ClassVar[str] = "random_removal"
    needs = frozenset({"prompts", "sampling"})

    class Config(PluginConfig):
        """How many words random removal drops, and how many variants it makes."""

        min_drop: float = Field(0.4, gt=0, lt=1, description="smallest share of words dropped")
        max_drop: float = Field(0.7, gt=0, lt=1, description="largest share of words dropped")
        draws: int = Field(
            5, ge=1, description="removals drawn per prompt; the distinct ones are its candidates (official: 5)"
        )
        variants: int = Field(
            1,
            ge=1,
            description="pairs per prompt, each with a different candidate drawn uniformly as c- "
            "(official: 1; fewer when a prompt has fewer candidates)",
        )

        @model_validator(mode="after")
        def _ordered(self) -> "RandomRemoval.Config":
            if self.min_drop > self.max_drop:
                raise ValueError(f"min_drop ({self.min_drop}) must not exceed max_drop ({self.max_drop})")
            if self.variants > self.draws:
                raise ValueError(f"variants ({self.variants}) cannot exceed draws ({self.draws})")
            return self

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        prompts = require_prompts(prompts, self.name)
        rows: list[PromptPair] = []
        skipped = 0
        for prompt in prompts:
            negatives = removal_variants(prompt, seed, self.config)
            skipped += not negatives
            for negative in negatives:
                rows.append(PromptPair(prompt=prompt, degraded=negative, seed=row_seed(seed, len(rows))))
        if skipped:
            log.info("random_removal skipped %d prompt(s) of fewer than 2 words", skipped)
        return rows
