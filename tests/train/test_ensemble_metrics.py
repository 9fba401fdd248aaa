"""What an ensemble run logs, from member predictions alone (no Ray): calibration, coverage, the ensemble's gain."""

from __future__ import annotations

import numpy as np
import pytest

from mtc.config import TrainConfig
from mtc.tasks import as_tasks
from mtc.train.ensemble import EnsemblePredictions, ensemble_metrics, fit_calibration, member_config

TASKS = as_tasks(
    [{"name": "band_gap", "unit": "eV"}, {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"}]
)


def predictions(n: int, seed: int) -> EnsemblePredictions:
    """5 members scattered about a mean whose error grows with their spread (x2), one label in ten missing."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 4, n)
    spread = rng.uniform(0.05, 0.5, n)
    mean = truth + rng.normal(0, 2 * spread)
    members = mean[None, :] + spread[None, :] * rng.choice([-1.0, 1.0], (5, n)) * np.sqrt(1.25)
    members -= members.mean(axis=0) - mean  # the members' mean is exactly ``mean``
    probability = rng.uniform(0, 1, (5, n))
    mask = np.stack([rng.uniform(size=n) > 0.1, np.ones(n, bool)], axis=1)
    target = np.stack([truth, (truth < 1).astype(float)], axis=1)
    return EnsemblePredictions([f"c{i}" for i in range(n)], np.stack([members, probability], axis=2), target, mask)


def test_calibrated_on_val_the_intervals_hold_on_test_and_the_mean_beats_a_member() -> None:
    val, test = predictions(3000, seed=0), predictions(6000, seed=1)
    calibration = fit_calibration(val, TASKS)
    assert set(calibration.quantiles) == {"band_gap"}  # binary tasks serve a probability spread, uncalibrated
    metrics = ensemble_metrics("test", test, TASKS, calibration)
    assert metrics["test/band_gap/coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert metrics["test/band_gap/coverage_68"] == pytest.approx(0.68, abs=0.025)
    assert metrics["test/band_gap/spread_spearman"] > 0.3
    assert metrics["test/band_gap/mae"] < metrics["test/band_gap/member_mae"]
    assert metrics["test/band_gap/n"] == test.mask[:, 0].sum()  # missing labels are left out
    assert "test/is_metal/auc" in metrics and "test/is_metal/coverage_90" not in metrics
    # binary: the mean probability's calibration, and what averaging the members gains over one of them
    assert 0 <= metrics["test/is_metal/ece"] <= 1
    assert metrics["test/is_metal/brier"] < metrics["test/is_metal/member_brier"]
    assert metrics["test/is_metal/probability_std"] == pytest.approx(test.spread[:, 1].mean())


def test_members_differ_by_seed_and_resample_only_when_asked() -> None:
    config = TrainConfig(tasks=TASKS, seed=7, run_name="ens")
    plain, resampled = member_config(config, 2, bootstrap=False), member_config(config, 2, bootstrap=True)
    assert (plain.seed, plain.split.bootstrap, plain.run_name) == (9, None, "ens-member-2")
    assert resampled.split.bootstrap == 2 and resampled.split.seed == config.split.seed  # the same split
