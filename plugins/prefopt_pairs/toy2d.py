"""Pair sources of the 2D toy experiment (paper Sec. 4.1).

``toy2d_points`` gives ground-truth or noisy points to pretrain the reference
(winner = loser = the point: only the denoising loss reads it).
``toy2d_neighbours`` gives N preference pairs per condition: x0^w sampled from
the reference under c, x0^l under a neighbouring condition c- (the paper: N = 2).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from pydantic import Field

from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt.toy2d_world import ToyLayout


class Toy2DPoints(PairSource):
    """Points of the toy world for pretraining: ground truth, or noisy with neighbour mixing."""

    name = "toy2d_points"

    class Config(PluginConfig):
        layout: ToyLayout = ToyLayout()
        points_per_condition: int = Field(1000, ge=1, le=1_000_000)  # all of them are drawn at once
        noisy_share: float = Field(
            0.3, ge=0, lt=1, description="share of each condition's points drawn from a neighbouring mode"
        )

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        import numpy as np

        cfg = self.config
        rng = np.random.default_rng(seed)
        conditions = np.repeat(np.arange(cfg.layout.num_conditions), cfg.points_per_condition)
        points = cfg.layout.sample(conditions, rng, cfg.noisy_share)
        return [
            PromptPair(prompt=str(c), degraded=str(c), seed=i, winner=tuple(p), loser=tuple(p))
            for i, (c, p) in enumerate(zip(conditions.tolist(), points.tolist()))
        ]


class Toy2DNeighbours(PairSource):
    """N pairs per condition: winner from c, loser from a neighbouring condition c-."""

    name = "toy2d_neighbours"
    needs = frozenset({"sampling"})

    class Config(PluginConfig):
        num_conditions: int = Field(8, ge=2)
        pairs_per_condition: int = Field(2, ge=1, description="N; the paper uses 2")

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> Iterator[PromptPair]:
        """A stream: `pairs preview` reads only the rows it shows, however many the recipe asks for."""
        import numpy as np

        cfg = self.config
        layout = ToyLayout(num_conditions=cfg.num_conditions)
        rng = np.random.default_rng(seed)
        for condition in range(cfg.num_conditions):
            for _ in range(cfg.pairs_per_condition):
                negative = layout.neighbours(condition)[int(rng.integers(2))]
                yield PromptPair(prompt=str(condition), degraded=str(negative), seed=int(rng.integers(2**31)))
