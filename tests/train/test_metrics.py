"""Metrics against hand-computed values (no sklearn)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mtc.tasks import as_tasks
from mtc.train.metrics import (
    binary_metrics,
    flatten_metrics,
    mean_absolute_deviation,
    regression_metrics,
    roc_auc,
    split_metrics,
    task_metrics,
    unit_free_score,
)


def auc_by_pairs(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pair_counting() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4])
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 1])
    assert roc_auc(scores, labels) == pytest.approx(auc_by_pairs(scores, labels))
    assert roc_auc(scores, labels) == pytest.approx(10 / 16)
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    assert roc_auc(scores, labels) == pytest.approx(auc_by_pairs(scores, labels))
    assert roc_auc(np.array([1.0, 2.0]), np.array([0, 1])) == 1.0
    assert math.isnan(roc_auc(np.array([0.2, 0.3]), np.array([1, 1])))
    assert math.isnan(roc_auc(np.array([]), np.array([])))


def test_regression_metrics_by_hand() -> None:
    target = np.array([1.0, 2.0, 4.0, 5.0])
    pred = np.array([1.5, 1.0, 4.0, 7.0])
    m = regression_metrics(pred, target)
    assert m["mae"] == pytest.approx((0.5 + 1 + 0 + 2) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 1 + 0 + 4) / 4))
    assert m["r2"] == pytest.approx(1 - 5.25 / 10.0)
    assert m["mad"] == pytest.approx(1.5) == mean_absolute_deviation(target)
    # ranks of pred: [2, 1, 3, 4] vs [1, 2, 3, 4]: rho = 1 - 6 * 2 / (4 * 15)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["n"] == 4
    constant = regression_metrics(np.array([1.0, 1.0]), np.array([2.0, 3.0]))
    assert math.isnan(constant["spearman"]) and constant["mae"] == 1.5
    empty = regression_metrics(np.array([]), np.array([]))
    assert math.isnan(empty["mae"]) and empty["n"] == 0


def test_binary_metrics() -> None:
    m = binary_metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    assert m == pytest.approx({"auc": 0.75, "accuracy": 0.5, "ece": 0.375, "brier": 0.1925, "n": 4.0})


def test_unit_free_score_counts_regression_and_binary_tasks() -> None:
    tasks = as_tasks([{"name": "a"}, {"name": "b"}, {"name": "m", "kind": "binary"}])
    per_task = {"a": {"mae": 0.1, "mad": 0.5}, "b": {"mae": 2.0, "mad": 4.0}, "m": {"auc": 0.9}}
    # a: 0.2, b: 0.5, m: (1 - 0.9) / 0.5 = 0.2
    assert unit_free_score(per_task, tasks) == pytest.approx((0.2 + 0.5 + 0.2) / 3)
    assert unit_free_score({"a": {"mae": 0.1, "mad": 0.5}, "b": {"mae": 2.0, "mad": 0.0}}, tasks) == pytest.approx(0.2)
    assert math.isnan(unit_free_score({}, tasks))


def test_unit_free_score_leaves_auxiliary_tasks_out() -> None:
    tasks = as_tasks([{"name": "a"}, {"name": "v", "auxiliary": True}])
    per_task = {"a": {"mae": 0.1, "mad": 0.5}, "v": {"mae": 3.0, "mad": 1.0}}
    assert unit_free_score(per_task, tasks) == pytest.approx(0.2)


def test_only_binary_tasks_still_give_a_finite_score() -> None:
    """#10.4: with binary tasks alone, model selection must see a number, not NaN."""
    tasks = as_tasks([{"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"}])
    per_task = task_metrics(
        np.array([[0.9], [0.2], [0.7]]), np.array([[1.0], [0.0], [1.0]]), np.ones((3, 1), bool), tasks
    )
    assert unit_free_score(per_task, tasks) == pytest.approx(0.0)


def test_metric_keys_round_trip() -> None:
    per_task = {"band_gap": {"mae": 0.3, "n": 4.0}, "is_metal": {"auc": 0.9}}
    flat = flatten_metrics("val", per_task)
    assert flat == {"val/band_gap/mae": 0.3, "val/band_gap/n": 4.0, "val/is_metal/auc": 0.9}
    assert split_metrics({**flat, "val_score": 0.5, "test/band_gap/mae": 1.0}, "val") == per_task


def test_task_metrics_with_mask_and_metal_auc() -> None:
    tasks = as_tasks(
        [
            {"name": "band_gap"},
            {"name": "efermi"},
            {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
        ]
    )
    target = np.array([[0.0, 1.0, 1.0], [2.0, 3.0, 0.0], [0.0, 9.9, 1.0], [1.0, 5.0, 0.0]])
    pred = np.array([[0.3, 2.0, 0.8], [1.5, 3.0, 0.3], [0.5, -50.0, 0.4], [0.2, 4.0, 0.6]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    m = task_metrics(pred, target, mask, tasks)
    assert m["band_gap"]["mae"] == pytest.approx((0.3 + 0.5 + 0.5 + 0.8) / 4)
    assert m["band_gap"]["mad"] == pytest.approx(0.75)
    # metals (gap 0): predicted gaps 0.3, 0.5; non-metals 1.5, 0.2: 2 of 4 pairs ranked right
    assert m["band_gap"]["metal_auc"] == pytest.approx(0.5)
    assert m["efermi"]["mae"] == pytest.approx(2 / 3) and m["efermi"]["n"] == 3
    assert m["efermi"]["mad"] == pytest.approx(4 / 3)
    assert m["is_metal"]["auc"] == pytest.approx(0.75) and m["is_metal"]["accuracy"] == 0.5
    assert "mae" not in m["is_metal"] and "metal_auc" not in m["efermi"]
    expected = (m["band_gap"]["mae"] / 0.75 + 0.5 + (1 - 0.75) / 0.5) / 3
    assert unit_free_score(m, tasks) == pytest.approx(expected)
    assert all(isinstance(v, float) for values in m.values() for v in values.values())
