"""prefopt's public plugin API, version 2: everything a third-party plugin may import.

A plugin package imports from this module only. Anything else under ``prefopt``
(the engine, the recipe loader, the first-party ``prefopt_*`` plugin packages)
may change between releases without notice; the names below change only with
``API_VERSION``.

A plugin declares the version it was written for with a module attribute in
the module its entry point names::

    PREFOPT_API = 2

prefopt refuses a plugin whose declared version it does not support, naming the
plugin in one ``error:`` line (a plugin that declares nothing is taken to target
version 1, the API before versions were declared). Version 2 renamed what version 1
called negative prompts and ``Backbone.identity`` (docs/writing-a-plugin.md lists the
changes), so a version-1 plugin is refused instead of failing mid-run.

Importing this module stays cheap: no torch, no diffusers.
"""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

from prefopt.data.jsonl import jsonl_objects
from prefopt.errors import DataError, MissingDependencyError, PluginError, PrefoptError, RecipeError, require
from prefopt.hookspecs import hookimpl
from prefopt.paths import RECIPE_PATH, RECIPE_PATH_OR_HUB_ID
from prefopt.interfaces import (
    REFERENCE,
    STUDENT,
    Backbone,
    Cond,
    Evaluator,
    LossOutput,
    Objective,
    ObjectiveInputs,
    PairSource,
    PluginConfig,
    Prediction,
    PromptPair,
    PromptRewrite,
    RewrittenPrompts,
    Runtime,
)

API_VERSION = 2
"""The version of this API. A plugin's ``PREFOPT_API`` must be one of ``SUPPORTED_API_VERSIONS``."""

SUPPORTED_API_VERSIONS = frozenset({2})

API_ATTRIBUTE = "PREFOPT_API"
"""The hook-module attribute where a plugin declares the API version it targets."""

SEED_BITS = 31
"""Row seeds fit a signed 32-bit int, so numpy, torch and diffusers all accept them."""


def stable_seed(*parts: object) -> int:
    """A non-negative int determined only by ``parts`` (their ``repr``s).

    SHA-256, not Python's ``hash()`` (salted per process): the same inputs give
    the same seed on every machine and in every process of a multi-GPU run.
    """
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << SEED_BITS)


def row_seed(seed: int, row: int) -> int:
    """The sampling seed of output row ``row`` of a pair source called with ``seed``.

    Both images of a pair are sampled with it, so the winner and loser differ
    only in their prompt; it depends on the row's index only, never on how far
    the rows have been read.
    """
    return stable_seed(seed, "row", row)


def prompt_rng(seed: int, prompt: str) -> random.Random:
    """A random generator for one prompt, independent of where the prompt sits in the list."""
    return random.Random(stable_seed(seed, "prompt", prompt))


def require_prompts(prompts: Sequence[str] | None, source: str) -> list[str]:
    """The prompts a prompt-driven pair source needs, or a one-line recipe error saying where to set them."""
    if prompts is None:
        raise RecipeError(f"pair source {source!r} needs prompts: set pairs.prompts in the recipe")
    return list(prompts)


__all__ = [
    "API_ATTRIBUTE",
    "API_VERSION",
    "SUPPORTED_API_VERSIONS",
    # the four interfaces and their base
    "Backbone",
    "Evaluator",
    "Objective",
    "PairSource",
    "PluginConfig",
    # what flows between them
    "Cond",
    "LossOutput",
    "ObjectiveInputs",
    "Prediction",
    "PromptPair",
    "PromptRewrite",
    "REFERENCE",
    "RewrittenPrompts",
    "Runtime",
    "STUDENT",
    # registration, and Config fields that name files (relative: from the recipe's folder)
    "hookimpl",
    "RECIPE_PATH",
    "RECIPE_PATH_OR_HUB_ID",
    # errors: raise a PrefoptError subclass for a one-line `error:` and exit code 2
    "DataError",
    "MissingDependencyError",
    "PluginError",
    "PrefoptError",
    "RecipeError",
    "require",
    # seeds, prompts and the JSONL files users give
    "SEED_BITS",
    "jsonl_objects",
    "prompt_rng",
    "require_prompts",
    "row_seed",
    "stable_seed",
]
