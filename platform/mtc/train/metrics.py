"""Per-task evaluation metrics on a whole split (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from mtc.tasks import TaskSpec


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
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def binary_metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """ROC-AUC (from probabilities) and accuracy at 0.5 on observed rows.

    Args:
        prob: (n,) predicted probabilities of class 1.
        label: (n,) 0/1 labels.

    Returns:
        ``{"auc", "accuracy", "n"}``.
    """
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    accuracy = float(((prob >= 0.5) == label).mean()) if label.size else float("nan")
    return {"auc": roc_auc(prob, label), "accuracy": accuracy, "n": float(label.size)}


def unit_free_score(maes: Mapping[str, float], mads: Mapping[str, float]) -> float:
    """Mean over tasks of MAE_k / MAD_k (lower is better; 1 is as good as predicting the mean).

    Tasks whose MAD is zero or not finite are skipped.

    Args:
        maes: task name -> MAE.
        mads: task name -> MAD of that task's targets on the same split.

    Returns:
        The score, NaN if no task qualifies.
    """
    ratios = [maes[name] / mads[name] for name in maes if np.isfinite(mads.get(name, np.nan)) and mads[name] > 0]
    return float(np.mean(ratios)) if ratios else float("nan")


def task_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """All metrics of a split, keyed ``"<task>/<metric>"``, plus ``"unit_free_score"``.

    Regression tasks get mae, rmse, r2, spearman, mad, n; binary tasks auc, accuracy, n. A regression
    task on ``band_gap`` also gets ``"<task>/metal_auc"``: ROC-AUC of metal (true gap == 0) against
    score = -predicted gap.

    Args:
        pred: (B, T) physical predictions (de-normalised values, probabilities).
        target: (B, T) targets.
        mask: bool (B, T), true where a label exists.
        tasks: T task specs.

    Returns:
        Plain dict of floats.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    mask = np.asarray(mask, dtype=bool)
    out: dict[str, float] = {}
    maes: dict[str, float] = {}
    mads: dict[str, float] = {}
    for k, task in enumerate(tasks):
        rows = mask[:, k]
        p, t = pred[rows, k], target[rows, k]
        if task.kind == "binary":
            values = binary_metrics(p, t)
        else:
            values = regression_metrics(p, t)
            maes[task.name], mads[task.name] = values["mae"], values["mad"]
            if task.column == "band_gap":
                values["metal_auc"] = roc_auc(-p, t == 0)
        out.update({f"{task.name}/{key}": value for key, value in values.items()})
    out["unit_free_score"] = unit_free_score(maes, mads)
    return out
