"""Pair generation's chunk size is a speed setting only: the built pairs do not depend on it.

``pairs.sample_batch_size`` sets how many pairs go into one pipeline call (c and c- of each row side
by side, CFG's two branches batched by the pipeline); docs/performance.md measures images/s against
it. Each row's noise comes from its own seeded generator, so the same rows sampled one pair per call
or all in one call give the same latents (to the float tolerance of a different batch size), and the
loser of a row starts from the winner's noise.
"""

from __future__ import annotations

import torch
from tiny_models import PROMPTS, load_backbone

from prefopt.data.build import _shard_tensors
from prefopt.interfaces import PromptPair
from prefopt_backbones.sd import SDBackbone


def test_sd_pairs_are_the_same_whatever_the_sampling_chunk(tiny_sd):
    backbone = load_backbone(SDBackbone, tiny_sd, train=False)
    rows = [PromptPair(prompt=PROMPTS[i % len(PROMPTS)], degraded=PROMPTS[(i + 1) % len(PROMPTS)], seed=40 + i)
            for i in range(3)]
    one_per_call, _ = _shard_tensors(backbone, rows, 1, "float32")
    all_in_one, loser_rows = _shard_tensors(backbone, rows, 3, "float32")
    assert loser_rows == [0, 1, 2]
    for key in ("x0_w", "x0_l"):
        assert all_in_one[key].shape == (3, 4, 8, 8)
        torch.testing.assert_close(all_in_one[key], one_per_call[key], rtol=0, atol=1e-5)
    # Each row against the pipeline on its own: the winner is c with the row's seed, the loser c- with the same.
    for i, row in enumerate(rows):
        alone = backbone.sample([row.prompt, row.degraded], [row.seed, row.seed])
        torch.testing.assert_close(all_in_one["x0_w"][i], alone[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(all_in_one["x0_l"][i], alone[1], rtol=0, atol=1e-5)
    assert not torch.allclose(all_in_one["x0_w"], all_in_one["x0_l"])  # c and c- do differ
