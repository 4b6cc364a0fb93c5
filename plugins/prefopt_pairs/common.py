"""Helpers shared by the pair sources: stable seeds and the prompts check.

Seeds are derived from SHA-256 of their parts, not from Python's ``hash()``,
which changes between processes: the same inputs give the same pairs on any
machine.
"""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

from prefopt.errors import RecipeError

SEED_BITS = 31
"""Row seeds fit a signed 32-bit int, so numpy, torch and diffusers all accept them."""


def stable_seed(*parts: object) -> int:
    """A non-negative int determined only by ``parts`` (their ``repr``s)."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << SEED_BITS)


def row_seed(seed: int, row: int) -> int:
    """The sampling seed of output row ``row``: both images of a pair use it."""
    return stable_seed(seed, "row", row)


def prompt_rng(seed: int, prompt: str) -> random.Random:
    """A generator for one prompt, independent of where the prompt sits in the list."""
    return random.Random(stable_seed(seed, "prompt", prompt))


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


def require_prompts(prompts: Sequence[str] | None, source: str) -> list[str]:
    """The prompts a prompt-driven source needs, or a recipe error saying where to set them."""
    if prompts is None:
        raise RecipeError(f"pair source {source!r} needs prompts: set pairs.prompts in the recipe")
    return list(prompts)
