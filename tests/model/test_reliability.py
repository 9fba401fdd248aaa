"""Reliability of a binary task's probabilities (pure numpy): bins, expected calibration error, Brier score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtc.model.reliability import N_BINS, brier_score, probability_metrics, reliability


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities uniform on [0, 1] and labels drawn with exactly those probabilities: (prob (n,), label (n,))."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, n)
    return prob, rng.uniform(0, 1, n) < prob


def test_calibrated_probabilities_lie_on_the_diagonal_and_overconfident_ones_do_not() -> None:
    prob, label = draw(40000, seed=0)
    calibrated = reliability(prob, label)
    assert calibrated.counts.sum() == prob.size and calibrated.counts.shape == (N_BINS,)
    assert np.abs(calibrated.frequency - calibrated.confidence).max() < 0.03
    assert calibrated.ece < 0.01
    assert brier_score(prob, label) == pytest.approx(1 / 6, abs=0.005)  # E[p (1 - p)] for p ~ U(0, 1)
    sharpened = np.where(prob > 0.5, 1 - (1 - prob) / 4, prob / 4)  # pushed towards 0 and 1: overconfident
    overconfident = reliability(sharpened, label)
    assert overconfident.ece > 0.1
    assert (overconfident.frequency[-1] < overconfident.confidence[-1]) and (
        overconfident.frequency[0] > overconfident.confidence[0]
    )
    assert brier_score(sharpened, label) > brier_score(prob, label)


def test_bins_hold_their_edges_and_empty_bins_are_nan() -> None:
    r = reliability(np.array([0.0, 0.05, 0.95, 1.0, 0.5]), np.array([0, 1, 1, 1, 0]))
    assert r.counts.tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 falls in the last bin, 0.5 in [0.5, 0.6)
    assert r.confidence[0] == pytest.approx(0.025) and r.frequency[0] == 0.5
    assert math.isnan(r.frequency[1]) and math.isnan(r.confidence[1])
    # |0.5 - 0.025| * 2 + |0 - 0.5| * 1 + |1 - 0.975| * 2, over 5 crystals
    assert r.ece == pytest.approx((0.95 + 0.5 + 0.05) / 5)
    empty = probability_metrics(np.array([]), np.array([]))
    assert math.isnan(empty["ece"]) and math.isnan(empty["brier"])
