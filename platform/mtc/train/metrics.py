"""Per-task evaluation metrics on a whole split, the unit-free selection score, metric keys (no torch, no Ray)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata, spearmanr

from mtc.model.reliability import probability_metrics
from mtc.tasks import TaskSpec, served


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Dataset-level ROC-AUC from ranks (Mann-Whitney U; ties count one half).

    Args:
        scores: (n,) higher means more likely positive.
        labels: (n,) 0/1 or bool.

    Returns:
        The AUC, or NaN if only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_absolute_deviation(values: np.ndarray) -> float:
    """Mean absolute deviation about the mean; NaN for no values."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.abs(values - values.mean()).mean()) if values.size else float("nan")


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R², Spearman ρ and the targets' MAD on observed rows.

    Args:
        pred: (n,) physical predictions.
        target: (n,) physical targets.

    Returns:
        ``{"mae", "rmse", "r2", "spearman", "mad", "n"}``; NaN where undefined (no rows, constant input).
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n = target.size
    if n == 0:
        return {key: float("nan") for key in ("mae", "rmse", "r2", "spearman", "mad")} | {"n": 0.0}
    err = pred - target
    ss_tot = float(np.square(target - target.mean()).sum())
    r2 = 1.0 - float(np.square(err).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt(np.square(err).mean())),
        "r2": r2,
        "spearman": _spearman(pred, target),
        "mad": mean_absolute_deviation(target),
        "n": float(n),
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def binary_metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """ROC-AUC (from probabilities), accuracy at 0.5, expected calibration error and Brier score on observed rows.

    Args:
        prob: (n,) predicted probabilities of class 1.
        label: (n,) 0/1 labels.

    Returns:
        ``{"auc", "accuracy", "ece", "brier", "n"}`` (``mtc.model.reliability``).
    """
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    accuracy = float(((prob >= 0.5) == label).mean()) if label.size else float("nan")
    return {
        "auc": roc_auc(prob, label),
        "accuracy": accuracy,
        **probability_metrics(prob, label),
        "n": float(label.size),
    }


def task_error(task: TaskSpec, metrics: Mapping[str, float]) -> float:
    """A task's error on a split: MAE for regression, 1 - ROC-AUC for binary tasks (NaN when absent)."""
    return 1.0 - metrics.get("auc", math.nan) if task.kind == "binary" else metrics.get("mae", math.nan)


def unit_free_score(per_task: Mapping[str, Mapping[str, float]], tasks: Sequence[TaskSpec]) -> float:
    """Mean over tasks of each task's error relative to a constant predictor (lower is better; 1 = no skill).

    Regression: MAE / MAD (predicting the mean scores 1). Binary: (1 - AUC) / 0.5 (a constant scores AUC 0.5).
    Tasks whose ratio is undefined (no labels, MAD 0, a single class) and auxiliary tasks (trained to help the
    others, never served) are skipped.

    Args:
        per_task: task name -> that task's metrics on the split (see ``task_metrics``).
        tasks: the task specs.

    Returns:
        The score, NaN if no task qualifies.
    """
    ratios = []
    for task in served(tasks):
        metrics = per_task.get(task.name, {})
        baseline = 0.5 if task.kind == "binary" else metrics.get("mad", math.nan)
        ratio = task_error(task, metrics) / baseline if baseline > 0 else math.nan
        if math.isfinite(ratio):
            ratios.append(ratio)
    return float(np.mean(ratios)) if ratios else float("nan")


def task_metrics(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray, tasks: Sequence[TaskSpec]
) -> dict[str, dict[str, float]]:
    """Every task's metrics on a split.

    Regression tasks get mae, rmse, r2, spearman, mad, n; binary tasks auc, accuracy, ece, brier, n. A regression
    task on ``band_gap`` also gets ``metal_auc``: ROC-AUC of metal (true gap == 0) against score = -predicted gap.

    Args:
        pred: (B, T) physical predictions (de-normalised values, probabilities).
        target: (B, T) targets.
        mask: bool (B, T), true where a label exists.
        tasks: T task specs.

    Returns:
        task name -> metric name -> float.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    mask = np.asarray(mask, dtype=bool)
    out: dict[str, dict[str, float]] = {}
    for k, task in enumerate(tasks):
        rows = mask[:, k]
        p, t = pred[rows, k], target[rows, k]
        if task.kind == "binary":
            values = binary_metrics(p, t)
        else:
            values = regression_metrics(p, t)
            if task.column == "band_gap":
                values["metal_auc"] = roc_auc(-p, t == 0)
        out[task.name] = values
    return out


def metric_key(split: str, task: str, metric: str) -> str:
    """The one spelling of a per-task metric in reports and MLflow: ``<split>/<task>/<metric>``."""
    return f"{split}/{task}/{metric}"


def flatten_metrics(split: str, per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task: {metric: v}}`` -> ``{"<split>/<task>/<metric>": v}``."""
    return {metric_key(split, task, name): value for task, values in per_task.items() for name, value in values.items()}


def split_metrics(metrics: Mapping[str, float], split: str) -> dict[str, dict[str, float]]:
    """The inverse of ``flatten_metrics`` for one split; other keys are ignored."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == split:
            out.setdefault(parts[1], {})[parts[2]] = value
    return out
