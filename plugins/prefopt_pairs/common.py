"""Helpers shared by the pair sources: stable seeds and the prompts check.

Seeds are derived from SHA-256 of their parts, not from Python's ``hash()``,
which changes between processes: the same inputs give the same pairs on any
machine.
"""

from __future__ import annotations

import random

# The seed and prompt helpers are prefopt's public plugin API (prefopt.api); the
# first-party sources use exactly what a third-party source would.
from prefopt.api import SEED_BITS, prompt_rng, require_prompts, row_seed, stable_seed  # noqa: F401


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (needs n >= 2).

    Sattolo's algorithm draws a single n-cycle, so ``perm[i] != i`` for every i
    without rejection sampling.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    rng = random.Random(stable_seed(seed, "derangement", n))
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm
