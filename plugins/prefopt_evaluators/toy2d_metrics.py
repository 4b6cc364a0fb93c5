"""Metrics of the 2D toy experiment, in numpy.

- mode accuracy: share of samples whose nearest ground-truth mode is their own
  condition's and which lie within 3σ of it;
- sliced Wasserstein-1 between generated and ground-truth points, per condition;
- separation between adjacent conditions: distance between their generated
  means over their pooled spread (a Fisher-style ratio; higher = better apart).
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


def separation(points: np.ndarray, conditions: np.ndarray, num_conditions: int) -> float:
    """Mean over adjacent (k, k+1) of |mean_k - mean_k+1| / pooled RMS spread."""
    ratios = []
    for k in range(num_conditions):
        j = (k + 1) % num_conditions
        a, b = points[conditions == k], points[conditions == j]
        if len(a) < 2 or len(b) < 2:
            continue
        spread = np.sqrt((a.var(axis=0).sum() + b.var(axis=0).sum()) / 2)
        ratios.append(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)) / max(spread, 1e-8))
    return float(np.mean(ratios)) if ratios else float("nan")
