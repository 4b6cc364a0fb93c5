"""Metrics of the 2D toy experiment, in numpy.

- mode accuracy: share of samples whose nearest ground-truth mode is their own
  condition's and which lie within 3σ of it;
- sliced Wasserstein-1 between generated and ground-truth points, per condition;
- separation between adjacent conditions: the share of two neighbouring
  conditions' samples that lie nearer their own true centre than the other's.
"""

from __future__ import annotations

import numpy as np


def mode_accuracy(points: np.ndarray, conditions: np.ndarray, centers: np.ndarray, std: float) -> float:
    distances = np.linalg.norm(points[:, None, :] - centers[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    own = distances[np.arange(len(points)), conditions]
    return float(np.mean((nearest == conditions) & (own <= 3 * std)))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 128, seed: int = 0) -> float:
    """Mean over random directions of the 1D Wasserstein-1 distance (equal sizes by quantiles)."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, np.pi, projections)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    quantiles = np.linspace(0, 1, max(len(a), len(b)))
    pa = np.quantile(a @ directions.T, quantiles, axis=0)
    pb = np.quantile(b @ directions.T, quantiles, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def separation(points: np.ndarray, conditions: np.ndarray, centers: np.ndarray) -> float:
    """How well adjacent conditions stay apart: 1 = fully separated, 0.5 = mixed.

    For every adjacent pair (k, k+1) the samples of both conditions are assigned
    to the nearer of the two true centres; the score is the share assigned to
    their own condition, averaged over pairs. Unlike a spread ratio it does not
    reward tight clusters that sit on the neighbour's mode.
    """
    k = len(centers)
    scores = []
    for a in range(k):
        b = (a + 1) % k
        mine = np.isin(conditions, (a, b))
        if not mine.any():
            continue
        pts, own = points[mine], conditions[mine]
        nearer_b = np.linalg.norm(pts - centers[b], axis=1) < np.linalg.norm(pts - centers[a], axis=1)
        scores.append(np.mean(np.where(nearer_b, b, a) == own))
    return float(np.mean(scores)) if scores else float("nan")
