"""Prompt-driven pair sources: random removal's properties and the unpaired variants' pairing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from prefopt.errors import DataError, RecipeError
from prefopt.registry import PluginRegistry
from prefopt_pairs.common import SEED_BITS
from prefopt_pairs.random_removal import RandomRemoval, drop_count, removal_variants
from prefopt_pairs.unpaired import NotPaired, RandPositive

words = st.text(alphabet="abcdefgh", min_size=1, max_size=5)
prompts_of_2_words_or_more = st.lists(words, min_size=2, max_size=30).map(" ".join)
seeds = st.integers(min_value=0, max_value=2**40)


@st.composite
def drop_ranges(draw):
    low, high = sorted(draw(st.floats(min_value=0.01, max_value=0.99)) for _ in range(2))
    return low, high


def is_subsequence(short: list[str], long: list[str]) -> bool:
    remaining = iter(long)
    return all(word in remaining for word in short)


def negatives(prompt: str, seed: int, **settings) -> list[str]:
    return [row.degraded for row in RandomRemoval(RandomRemoval.Config(**settings)).pairs([prompt], seed)]


# --------------------------------------------------------------------------- random_removal


@given(prompts_of_2_words_or_more, seeds, drop_ranges())
def test_drop_share_within_bounds_never_all_never_none(prompt, seed, drop_range):
    # The count is max(1, floor(f * n)) for f in [min_drop, max_drop] (the
    # official rule); it is monotone in f, so it lies between the counts of
    # the two ends, and f < 1 keeps at least one word.
    low, high = drop_range
    n = len(prompt.split())
    (negative,) = negatives(prompt, seed, min_drop=low, max_drop=high)
    dropped = n - len(negative.split())
    assert 1 <= dropped <= n - 1
    assert drop_count(n, low) <= dropped <= drop_count(n, high)


@given(prompts_of_2_words_or_more, seeds, st.integers(min_value=1, max_value=6))
def test_negatives_are_in_order_subsequences_and_distinct(prompt, seed, variants):
    found = negatives(prompt, seed, variants=variants, draws=max(variants, 5))
    assert 1 <= len(found) <= variants
    assert len(set(found)) == len(found)
    for negative in found:
        assert is_subsequence(negative.split(), prompt.split())
        assert negative != prompt


@given(prompts_of_2_words_or_more, prompts_of_2_words_or_more, seeds)
def test_deterministic_for_a_seed_and_independent_of_list_order(prompt, other, seed):
    source = RandomRemoval(RandomRemoval.Config(variants=2))
    first = source.pairs([prompt, other], seed)
    assert first == source.pairs([prompt, other], seed)
    assume(prompt != other)
    alone = [row.degraded for row in source.pairs([prompt], seed)]
    behind = [row.degraded for row in source.pairs([other, prompt], seed) if row.prompt == prompt]
    assert behind == alone


def test_row_seeds_are_deterministic_distinct_and_fit_32_bits():
    prompts = [f"prompt number {i} of many" for i in range(200)]
    rows = RandomRemoval(RandomRemoval.Config(variants=2)).pairs(prompts, seed=7)
    row_seeds = [row.seed for row in rows]
    assert row_seeds == [row.seed for row in RandomRemoval(RandomRemoval.Config(variants=2)).pairs(prompts, seed=7)]
    assert len(set(row_seeds)) == len(row_seeds)
    assert all(0 <= s < 2**SEED_BITS for s in row_seeds)
    assert row_seeds != [row.seed for row in RandomRemoval(RandomRemoval.Config(variants=2)).pairs(prompts, seed=8)]


def test_short_prompts_are_skipped_and_generated_negatives_are_the_default():
    rows = RandomRemoval().pairs(["cat", "", "a red cat"], seed=0)
    assert [row.prompt for row in rows] == ["a red cat"]
    assert (rows[0].winner, rows[0].loser, rows[0].loser_from) == (None, None, None)


def test_fewer_variants_when_a_prompt_has_fewer_distinct_removals():
    assert sorted(removal_variants("a a", 0, RandomRemoval.Config(variants=5))) == ["a"]
    assert sorted(removal_variants("red cat", 0, RandomRemoval.Config(variants=5, draws=20))) == ["cat", "red"]


@pytest.mark.parametrize(("n", "fraction", "count"), [(2, 0.4, 1), (2, 0.7, 1), (3, 0.7, 2), (10, 0.4, 4),
                                                       (10, 0.69, 6), (7, 0.5, 3), (5, 0.4, 2), (1000, 0.7, 700)])
def test_drop_count_is_the_official_floor_rule(n, fraction, count):
    # Official data_prep/random_removal.py: max(1, int(ratio * len(words))); not rounded.
    assert drop_count(n, fraction) == count


def test_official_defaults_five_draws_one_pair_per_prompt_drawn_among_the_candidates():
    config = RandomRemoval.Config()
    assert (config.min_drop, config.max_drop, config.draws, config.variants) == (0.4, 0.7, 5, 1)
    prompt = "a photo of a red cat sitting on a wooden chair by the window"
    # Over many seeds the one c- of a prompt takes every candidate the 5 draws can make
    # (not only the first drawn): the official random.choice over the variant set.
    from prefopt_pairs.common import prompt_rng
    from prefopt_pairs.random_removal import removal_candidates

    picks_first = 0
    for seed in range(200):
        (negative,) = removal_variants(prompt, seed, config)
        candidates = removal_candidates(prompt, prompt_rng(seed, prompt), config)
        assert negative in candidates and 1 <= len(candidates) <= 5
        picks_first += negative == candidates[0]
    assert 20 < picks_first < 80  # about 1 in 5, not always the first


@pytest.mark.parametrize(
    "settings",
    [dict(min_drop=0.8, max_drop=0.5), dict(min_drop=0.0), dict(max_drop=1.0), dict(variants=0), dict(drop=0.5),
     dict(draws=0), dict(variants=6, draws=5)],
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValidationError):
        RandomRemoval.Config(**settings)


def test_prompts_are_required():
    with pytest.raises(RecipeError, match="set pairs.prompts"):
        RandomRemoval().pairs(None, seed=0)


# --------------------------------------------------------------------------- unpaired variants

distinct_prompts = st.lists(prompts_of_2_words_or_more, min_size=2, max_size=20, unique=True)


@given(distinct_prompts, seeds)
def test_rand_positive_uses_another_rows_winner_and_its_prompt(prompts, seed):
    rows = RandPositive().pairs(prompts, seed)
    assert [row.prompt for row in rows] == prompts
    assert sorted(row.loser_from for row in rows) == list(range(len(prompts)))  # each winner reused once
    for index, row in enumerate(rows):
        assert row.loser_from != index
        assert row.degraded == prompts[row.loser_from]
        assert (row.winner, row.loser) == (None, None)
    assert rows == RandPositive().pairs(prompts, seed)


@given(distinct_prompts, seeds)
def test_not_paired_perturbs_its_own_prompt_and_borrows_another_winner(prompts, seed):
    rows = NotPaired().pairs(prompts, seed)
    assert [row.prompt for row in rows] == prompts
    for index, row in enumerate(rows):
        assert row.loser_from != index and 0 <= row.loser_from < len(rows)
        assert [row.degraded] == removal_variants(row.prompt, seed, RandomRemoval.Config())
        assert is_subsequence(row.degraded.split(), row.prompt.split())
        assert (row.winner, row.loser) == (None, None)


def test_not_paired_skips_short_prompts_before_pairing():
    rows = NotPaired().pairs(["cat", "a red cat", "dog", "two dogs running"], seed=1)
    assert [row.prompt for row in rows] == ["a red cat", "two dogs running"]
    assert [row.loser_from for row in rows] == [1, 0]


def test_not_paired_takes_removal_settings_but_one_variant():
    source = NotPaired(NotPaired.Config(perturb={"min_drop": 0.5, "max_drop": 0.5}))
    (row, _) = source.pairs(["a b c d", "e f g h"], seed=0)
    assert len(row.degraded.split()) == 2
    with pytest.raises(ValidationError, match="perturb.variants must be 1"):
        NotPaired.Config(perturb={"variants": 2})


@pytest.mark.parametrize("source", [RandPositive, NotPaired])
def test_unpaired_variants_need_two_rows(source):
    assert source().pairs([], seed=0) == []
    with pytest.raises(DataError, match="at least 2 prompts"):
        source().pairs(["a red cat"], seed=0)


# --------------------------------------------------------------------------- registration


def test_sources_are_registered_through_the_entry_point():
    names = PluginRegistry().names("pair_source")
    assert {"random_removal", "llm_rewrite", "rand_positive", "not_paired", "pickapic"} <= set(names)


def test_plugin_module_imports_without_torch():
    code = "import sys, prefopt_pairs.plugin; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
