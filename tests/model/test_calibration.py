"""Conformal calibration of an ensemble's spread: intervals that hold on unseen data, and its measures."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.data.splits import bootstrap_counts
from mtc.model.calibration import (
    LEVELS,
    Calibration,
    calibration_metrics,
    coverage_curve,
    fit_quantiles,
    interval_factor,
    miscalibration_area,
)


def draw(n: int, seed: int, scale: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Heteroscedastic errors whose raw spread is ``scale`` times too small: (error (n,), spread (n,))."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.1, 2.0, n)
    return rng.normal(0.0, scale * spread), spread


def test_calibrated_intervals_hold_on_fresh_data_at_every_level() -> None:
    error, spread = draw(4000, seed=0)
    quantiles = fit_quantiles(error, spread)
    fresh_error, fresh_spread = draw(40000, seed=1)
    observed = coverage_curve(fresh_error, fresh_spread, quantiles)
    assert np.abs(observed - LEVELS).max() < 0.025
    assert interval_factor(quantiles, 0.6827) == pytest.approx(2.5, rel=0.05)  # the spread's true scale
    # the raw spread as a normal std covers far too little: calibration is what makes the intervals hold
    raw = np.mean(np.abs(fresh_error) <= interval_factor(None, 0.9) * fresh_spread)
    assert raw < 0.6


def test_metrics_tell_a_calibrated_spread_from_a_useless_one() -> None:
    error, spread = draw(4000, seed=2)
    good = calibration_metrics(error, spread, fit_quantiles(error, spread))
    assert good["coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert good["miscalibration_area"] < 0.02
    assert good["spread_spearman"] > 0.3
    flat = np.ones_like(spread)  # the same spread for every crystal: no ranking, intervals of one width
    shuffled = calibration_metrics(error, np.random.default_rng(3).permutation(spread), fit_quantiles(error, flat))
    assert abs(shuffled["spread_spearman"]) < 0.1
    assert shuffled["miscalibration_area"] > good["miscalibration_area"]


def test_miscalibration_area_is_zero_on_the_diagonal_and_grows_off_it() -> None:
    assert miscalibration_area(LEVELS) == 0.0
    assert miscalibration_area(np.ones_like(LEVELS)) == pytest.approx(np.mean(1 - LEVELS))


def test_calibration_round_trips_and_rejects_levels_it_cannot_serve() -> None:
    error, spread = draw(500, seed=4)
    calibration = Calibration({"band_gap": fit_quantiles(error, spread), "efermi": None})
    again = Calibration.from_dict(calibration.to_dict())
    assert again.factor("band_gap", 0.9) == calibration.factor("band_gap", 0.9) > again.std_factor("band_gap")
    assert again.factor("efermi", 0.9) == pytest.approx(1.645, abs=1e-3)  # no validation labels: normal quantile
    with pytest.raises(ValueError, match="interval level"):
        again.factor("band_gap", 0.999)


def test_poisson_bootstrap_counts_are_deterministic_and_resample() -> None:
    ids = [f"mp-{i}" for i in range(20000)]
    counts = bootstrap_counts(ids, 0)
    assert np.array_equal(counts, bootstrap_counts(ids, 0))
    assert not np.array_equal(counts, bootstrap_counts(ids, 1))
    assert counts.mean() == pytest.approx(1.0, abs=0.03)
    assert (counts == 0).mean() == pytest.approx(np.exp(-1), abs=0.02)


def test_out_of_domain_flags_name_each_reason() -> None:
    from mtc.model.domain import training_domain

    training = [np.array([11, 17]), np.array([3, 8, 8, 8])]  # NaCl, Li-O: 4 atoms at most
    domain = training_domain(training, {"band_gap": np.array([0.1, 0.3])})
    atoms = np.array([11, 17, 94, 3, 8, 8, 8, 8, 11, 17])  # NaPuCl, LiO4, NaCl
    index = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    flags = domain.flags(atoms, index, 3, {"band_gap": np.array([0.2, 0.1, 0.5])})
    assert flags[0] == "element Z=94 not in training"
    assert flags[1] == "5 atoms > 4 (largest training cell)"
    assert flags[2] == "band_gap spread above validation's"
    assert domain.flags(atoms[:2], index[:2], 1, {"band_gap": np.array([0.3])}) == [None]
