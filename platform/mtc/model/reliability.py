"""How well a binary task's predicted probabilities hold (pure numpy, no torch, no Ray).

A reliability diagram bins the crystals by predicted probability (``N_BINS`` equal-width bins on [0, 1]) and sets
each bin's mean predicted probability against the fraction of it that is truly positive; well calibrated, the two
agree and the points lie on y = x. The expected calibration error (ECE, Naeini et al. 2015) is the crystal-weighted
mean of the gap; the Brier score is the mean squared difference of probability and label (lower is better, 0.25 for
a constant 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BINS = 10


@dataclass
class Reliability:
    """Equal-width bins of predicted probability. edges: (n_bins + 1,); confidence, frequency: (n_bins,) the bin's
    mean predicted probability and its observed fraction of positives (NaN where the bin is empty); counts:
    (n_bins,) crystals per bin."""

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: Σ_b (n_b / n) |frequency_b − confidence_b|; NaN with no crystals."""
        n = self.counts.sum()
        if n == 0:
            return float("nan")
        filled = self.counts > 0
        gaps = np.abs(self.frequency[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / n)


def reliability(prob: np.ndarray, label: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """The reliability diagram's bins. Args: prob (n,) in [0, 1], label (n,) 0/1 or bool. Bin b holds
    ``edges[b] <= p < edges[b + 1]`` (the last bin includes 1)."""
    prob = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    label = np.asarray(label).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, prob, n_bins) / counts
        frequency = np.bincount(index, label, n_bins) / counts
    return Reliability(edges, confidence, frequency, counts)


def brier_score(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean (prob − label)²; NaN with no crystals. Args: prob (n,), label (n,) 0/1 or bool."""
    prob = np.asarray(prob, np.float64)
    return float(np.square(prob - np.asarray(label, np.float64)).mean()) if prob.size else float("nan")


def probability_metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """``ece`` (over ``N_BINS`` bins) and ``brier`` of one split's probabilities. Args: prob (n,), label (n,)."""
    return {"ece": reliability(prob, label).ece, "brier": brier_score(prob, label)}
