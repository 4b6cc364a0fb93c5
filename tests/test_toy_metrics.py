"""Worked examples for the toy experiment's world and metrics."""

import numpy as np
import pytest

from prefopt.toy2d_world import ToyLayout
from prefopt_evaluators.toy2d_metrics import mode_accuracy, separation, sliced_wasserstein

LAYOUT = ToyLayout(num_conditions=4, radius=4.0, std=0.25)  # centres (4,0), (0,4), (-4,0), (0,-4)


def test_layout_centres_and_neighbours():
    np.testing.assert_allclose(LAYOUT.centers(), [[4, 0], [0, 4], [-4, 0], [0, -4]], atol=1e-12)
    assert LAYOUT.neighbours(0) == (3, 1)


def test_noisy_share_moves_that_share_of_points_to_a_neighbour():
    conditions = np.zeros(20000, dtype=int)
    points = LAYOUT.sample(conditions, np.random.default_rng(0), noisy_share=0.3)
    nearest = np.linalg.norm(points[:, None] - LAYOUT.centers()[None], axis=-1).argmin(1)
    assert np.mean(nearest != 0) == pytest.approx(0.3, abs=0.01)
    assert set(np.unique(nearest)) == {0, 1, 3}  # only neighbours, never the opposite mode


def test_mode_accuracy_counts_own_nearest_mode_within_three_sigma():
    points = np.array([[4.0, 0.0],   # on its own centre: counts
                       [4.7, 0.0],   # own nearest but 0.7 > 3σ = 0.75? no: 0.7 < 0.75, counts
                       [5.0, 0.0],   # own nearest, 1.0 away > 0.75: does not count
                       [0.0, 4.0]])  # nearest is condition 1: does not count
    assert mode_accuracy(points, np.zeros(4, dtype=int), LAYOUT.centers(), LAYOUT.std) == pytest.approx(0.5)


def test_sliced_wasserstein_is_zero_for_equal_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 2))
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)
    # A shift d along x moves each projection by d·|cos θ|; its mean over θ ~ U(0, π) is 2d/π.
    shifted = sliced_wasserstein(a, a + np.array([1.0, 0.0]), projections=4096)
    assert shifted == pytest.approx(2 / np.pi, rel=0.03)


def test_separation_is_one_when_apart_and_falls_when_neighbours_mix():
    centers = LAYOUT.centers()
    conditions = np.repeat(np.arange(4), 50)
    apart = centers[conditions]
    assert separation(apart, conditions, centers) == 1.0
    # Every condition's samples split evenly between its own mode and the next one.
    # For the adjacent pair (k, k+1): k's samples are half right, half on k+1 (wrong);
    # k+1's samples sit on k+1 (right) or on k+2, which is nearer k+1 than k (right).
    # So each pair scores (0.5 + 1) / 2 = 0.75.
    half = np.where(np.arange(200) % 2 == 0, conditions, (conditions + 1) % 4)
    assert separation(centers[half], conditions, centers) == pytest.approx(0.75)
    # Fully swapped neighbours score 0.
    swapped = np.array([1, 0])
    assert separation(centers[swapped], np.array([0, 1]), centers[:2]) == 0.0
