"""Calibrated intervals from an ensemble's spread, and how well they hold (pure numpy, no torch, no Ray).

Normalised split-conformal prediction (Angelopoulos & Bates 2021, §2.3): on the validation split each crystal's
score is ``r = |prediction - truth| / spread`` (spread: the standard deviation of the members' predictions).
A task's calibration is the conformal quantile ``q_p`` of the scores at every level ``p`` of ``LEVELS``; the
central ``p`` interval of a new crystal is ``prediction ± q_p · spread``. It holds about ``p`` of unseen crystals
drawn like the validation ones, at every level at once, and is as wide, crystal by crystal, as the members
disagree. ``q_68.3% · spread`` is reported as the crystal's calibrated standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVELS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 .. 0.99
ONE_SIGMA = math.erf(1 / math.sqrt(2))  # 0.6827: mean ± std of a normal
REPORTED = (0.68, 0.90, 0.95)
_TINY = 1e-12  # a spread of exactly 0 (identical members) scores as a very large r, not a division by zero


def scores(error: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Normalised scores. Args: error (n,) prediction - truth, spread (n,) >= 0. Returns: (n,) ``|error| / spread``."""
    return np.abs(np.asarray(error, np.float64)) / np.maximum(np.asarray(spread, np.float64), _TINY)


def fit_quantiles(error: np.ndarray, spread: np.ndarray) -> list[float]:
    """The conformal quantile of the scores at each of ``LEVELS``: the ``ceil((n + 1) p)``-th smallest score.

    Where that rank exceeds n (fewer than ``1 / (1 - p)`` crystals), the largest score stands in.

    Args: error (n,), spread (n,), n >= 1. Returns: ``len(LEVELS)`` non-decreasing factors.
    """
    r = np.sort(scores(error, spread))
    if r.size == 0:
        raise ValueError("calibration needs at least one labelled crystal")
    ranks = np.minimum(np.ceil((r.size + 1) * LEVELS).astype(int), r.size)
    return [float(q) for q in r[ranks - 1]]


def interval_factor(quantiles: list[float] | None, level: float) -> float:
    """The half-width of the central ``level`` interval in units of spread (interpolated between ``LEVELS``).

    ``quantiles`` None (a task without validation labels): the normal quantile, uncalibrated.
    """
    if not LEVELS[0] <= level <= LEVELS[-1]:
        raise ValueError(f"an interval level must lie in [{LEVELS[0]}, {LEVELS[-1]}], got {level}")
    if quantiles is None:
        return NormalDist().inv_cdf(0.5 + level / 2)
    return float(np.interp(level, LEVELS, quantiles))


def coverage_curve(error: np.ndarray, spread: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Observed fraction inside the central interval at each of ``LEVELS``: (len(LEVELS),)."""
    r = scores(error, spread)
    return (r[:, None] <= np.asarray(quantiles)[None, :]).mean(axis=0)


def miscalibration_area(observed: np.ndarray) -> float:
    """Mean |observed - expected coverage| over ``LEVELS``: the area between the calibration curve and y = x."""
    return float(np.abs(np.asarray(observed) - LEVELS).mean())


def calibration_metrics(error: np.ndarray, spread: np.ndarray, quantiles: list[float]) -> dict[str, float]:
    """``coverage_68`` / ``_90`` / ``_95``, ``miscalibration_area``, ``spread_spearman`` (ρ of |error| and spread)
    and ``width_90`` (mean width of the 90 % interval) on one split. Args: error (n,), spread (n,), n >= 1."""
    from scipy.stats import spearmanr  # scipy is 0.6 s of import: kept off the screen's start-up

    observed = coverage_curve(error, spread, quantiles)
    metrics = {f"coverage_{round(p * 100)}": float(observed[np.argmin(np.abs(LEVELS - p))]) for p in REPORTED}
    metrics["miscalibration_area"] = miscalibration_area(observed)
    rho = spearmanr(np.abs(error), spread).statistic if len(error) > 2 else float("nan")
    metrics["spread_spearman"] = float(rho)
    metrics["width_90"] = float(2 * interval_factor(quantiles, 0.9) * np.mean(spread))
    return metrics


@dataclass
class Calibration:
    """Per regression task: the conformal factors at ``LEVELS`` (None: no validation label, normal quantiles).

    Stored in ``model.json`` as plain lists.
    """

    quantiles: dict[str, list[float] | None]

    def to_dict(self) -> dict:
        return {"method": "normalized_split_conformal", "levels": LEVELS.tolist(), "quantiles": self.quantiles}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        if not np.allclose(data["levels"], LEVELS):
            raise ValueError("calibration levels differ from this mtc's")
        return cls(dict(data["quantiles"]))

    def std_factor(self, task: str) -> float:
        """Spread -> calibrated standard deviation (the half-width of the 68.3 % interval)."""
        return interval_factor(self.quantiles.get(task), ONE_SIGMA)

    def factor(self, task: str, level: float) -> float:
        """Spread -> half-width of the central ``level`` interval."""
        return interval_factor(self.quantiles.get(task), level)
