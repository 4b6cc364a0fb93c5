"""The 2D toy world of the paper's Sec. 4.1: K conditions, each a Gaussian mode.

Modes sit evenly on a circle, so every condition has two neighbours. The noisy
training set mimics imperfect supervision: a share of each condition's points
is drawn from a neighbouring mode instead of its own. Pure numpy.

The toy's pair sources (``prefopt_pairs.toy2d``) and its evaluator
(``prefopt_evaluators.toy2d``) both draw from this world, so it lives here,
where neither has to import the other's (or the backbone's) package.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from prefopt.interfaces import PluginConfig


class ToyLayout(PluginConfig):
    num_conditions: int = Field(8, ge=2, description="K conditions, one Gaussian mode each")
    radius: float = Field(4.0, gt=0, description="modes sit on a circle of this radius")
    std: float = Field(0.25, gt=0, description="standard deviation of each mode")

    def centers(self) -> np.ndarray:
        angles = 2 * np.pi * np.arange(self.num_conditions) / self.num_conditions
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def neighbours(self, condition: int) -> tuple[int, int]:
        k = self.num_conditions
        return (condition - 1) % k, (condition + 1) % k

    def sample(self, conditions: np.ndarray, rng: np.random.Generator, noisy_share: float = 0.0) -> np.ndarray:
        """Points for each condition; with prob. noisy_share from a random neighbour's mode."""
        conditions = np.asarray(conditions)
        modes = conditions.copy()
        if noisy_share > 0:
            swap = rng.random(len(conditions)) < noisy_share
            step = np.where(rng.random(len(conditions)) < 0.5, -1, 1)
            modes = np.where(swap, (conditions + step) % self.num_conditions, conditions)
        return self.centers()[modes] + self.std * rng.standard_normal((len(conditions), 2))
