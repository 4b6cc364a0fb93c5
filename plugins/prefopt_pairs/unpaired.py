"""Unpaired variants of DDSPO (paper Sec. 3.3, Table 3b): no negative image is generated.

Each row's loser is the winner image of another row (``loser_from``), drawn
by a seeded derangement so no row is paired with itself. The two variants
differ only in the degraded prompt c-.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Sequence

from pydantic import Field, field_validator

from prefopt.errors import DataError
from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt_pairs.common import derangement, require_prompts, row_seed
from prefopt_pairs.random_removal import RandomRemoval, removal_variants

log = logging.getLogger(__name__)


def partner_rows(n_rows: int, seed: int, source: str) -> list[int]:
    """For each row, the other row whose winner becomes its loser."""
    if n_rows == 0:
        return []
    if n_rows == 1:
        raise DataError(f"pair source {source!r} needs at least 2 prompts: it pairs each row with another")
    return derangement(n_rows, seed)


class RandPositive(PairSource):
    """Unpaired DDSPO: another prompt's winner image is the loser, and that prompt is c-.

    Row i keeps its prompt as c; its loser image is the winner of row
    j = ``loser_from`` (a seeded derangement, j != i) and c- is prompt j, so
    the losing branch is a correctly paired image and prompt from elsewhere
    ("Rand-positive" in Table 3b). Duplicate prompts are assumed removed
    upstream (the prompt loader dedupes by default).
    """

    name: ClassVar[str] = "rand_positive"
    needs = frozenset({"prompts", "sampling"})

    class Config(PluginConfig):
        """Nothing to set: the pairing is fixed by the seed."""

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        prompts = require_prompts(prompts, self.name)
        partners = partner_rows(len(prompts), seed, self.name)
        return [
            PromptPair(prompt=prompt, degraded=prompts[j], seed=row_seed(seed, i), loser_from=j)
            for i, (prompt, j) in enumerate(zip(prompts, partners))
        ]


class NotPaired(PairSource):
    """Unpaired DDSPO: another prompt's winner image is the loser, with this prompt perturbed as c-.

    c- is a random removal of the row's own prompt (as ``random_removal``
    with the ``perturb`` settings would make it), while the loser image is the
    winner of another row j = ``loser_from`` ("Not-paired" in Table 3b, the
    better of the two unpaired variants). Prompts under 2 words are skipped
    before the rows are paired, so ``loser_from`` always names a kept row.
    """

    name: ClassVar[str] = "not_paired"
    needs = frozenset({"prompts", "sampling"})

    class Config(PluginConfig):
        """The perturbation that turns c into c-."""

        perturb: RandomRemoval.Config = Field(
            default_factory=RandomRemoval.Config,
            description="random removal settings for c- (variants must stay 1: one row per prompt)",
        )

        @field_validator("perturb")
        @classmethod
        def _one_variant(cls, perturb: RandomRemoval.Config) -> RandomRemoval.Config:
            # Several rows of one prompt could be paired with each other, which
            # would make the loser image a sample of the row's own prompt.
            if perturb.variants != 1:
                raise ValueError("not_paired makes one row per prompt: perturb.variants must be 1")
            return perturb

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        prompts = require_prompts(prompts, self.name)
        kept = [(p, negatives[0]) for p in prompts if (negatives := removal_variants(p, seed, self.config.perturb))]
        if len(kept) < len(prompts):
            log.info("not_paired skipped %d prompt(s) of fewer than 2 words", len(prompts) - len(kept))
        partners = partner_rows(len(kept), seed, self.name)
        return [
            PromptPair(prompt=prompt, degraded=negative, seed=row_seed(seed, i), loser_from=j)
            for i, ((prompt, negative), j) in enumerate(zip(kept, partners))
        ]
