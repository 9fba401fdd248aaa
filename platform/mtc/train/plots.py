"""Figures people would rather look at than read: parity plots and learning curves (PNG bytes)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def to_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def parity_plot(pred: np.ndarray, target: np.ndarray, task: str, unit: str, mae: float) -> bytes:
    """Predicted vs DFT value for one task on one split, with the y = x line and the MAE."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    lo, hi = float(min(pred.min(), target.min())), float(max(pred.max(), target.max()))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
    ax.scatter(target, pred, s=4, alpha=0.35, color="tab:blue", edgecolors="none")
    label = f" ({unit})" if unit else ""
    ax.set_xlabel(f"DFT {task}{label}")
    ax.set_ylabel(f"predicted {task}{label}")
    ax.set_title(f"{task}: test MAE {mae:.4g}{(' ' + unit) if unit else ''}, n={len(pred)}", fontsize=9)
    ax.set_aspect("equal", adjustable="box")
    return to_png(fig)


def learning_curves(history: list[dict[str, float]]) -> bytes:
    """Training loss and validation unit-free score per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    left.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    right.plot(epochs, [h["val_score"] for h in history], marker="o", ms=3, color="tab:orange")
    right.set(xlabel="epoch", ylabel="mean MAE / MAD", title="validation unit-free score (lower is better)")
    fig.tight_layout()
    return to_png(fig)


def calibration_plot(curves: dict[str, np.ndarray], task: str) -> bytes:
    """Observed vs expected coverage of the central intervals, one curve per split (``curves``: split -> (99,))."""
    from mtc.model.calibration import LEVELS, miscalibration_area

    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, zorder=0)
    for split, observed in curves.items():
        ax.plot(LEVELS, observed, label=f"{split} (area {miscalibration_area(observed):.3f})")
    ax.set(xlabel="expected coverage (central interval)", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"{task}: calibration", fontsize=9)
    ax.legend(fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    return to_png(fig)


def error_vs_spread_plot(error: np.ndarray, std: np.ndarray, task: str, unit: str) -> bytes:
    """|error| against the calibrated std per crystal (log-log), with the RMS error of std-sorted bins.

    Well calibrated, the binned RMS error follows y = x.
    """
    from scipy.stats import spearmanr

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    floor = max(float(np.percentile(error, 1)), 1e-6)
    ax.scatter(std, np.maximum(error, floor), s=4, alpha=0.3, color="tab:blue", edgecolors="none")
    order = np.argsort(std)
    bins = [b for b in np.array_split(order, min(10, len(order))) if b.size]
    ax.plot(
        [std[b].mean() for b in bins],
        [np.sqrt(np.square(error[b]).mean()) for b in bins],
        "o-",
        color="tab:red",
        label="RMS error per bin",
    )
    lo, hi = float(min(std.min(), floor)), float(max(std.max(), error.max()))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
    label = f" ({unit})" if unit else ""
    ax.set(xscale="log", yscale="log", xlabel=f"predicted std{label}", ylabel=f"|error|{label}")
    rho = spearmanr(error, std).statistic if len(error) > 2 else float("nan")
    ax.set_title(f"{task}: test, Spearman rho {rho:.2f}, n={len(error)}", fontsize=9)
    ax.legend(fontsize=8)
    return to_png(fig)


def reliability_plot(diagrams: dict, task: str) -> bytes:
    """A binary task's reliability diagram, one curve per split (``diagrams``: split -> ``Reliability``): observed
    fraction of positives against mean predicted probability per bin, with y = x, and the crystals per bin below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.4, 5.4), sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="0.5", lw=1, zorder=0)
    width = 1.0 / max(len(diagrams), 1)
    for i, (split, r) in enumerate(diagrams.items()):
        filled = r.counts > 0
        top.plot(r.confidence[filled], r.frequency[filled], "o-", ms=4, label=f"{split} (ECE {r.ece:.3f})")
        centers = (r.edges[:-1] + r.edges[1:]) / 2
        step = r.edges[1] - r.edges[0]
        bottom.bar(centers + (i - (len(diagrams) - 1) / 2) * width * step, r.counts, width=width * step, label=split)
    top.set(ylabel="observed fraction positive", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{task}: reliability", fontsize=9)
    top.legend(fontsize=8)
    bottom.set(xlabel="predicted probability", ylabel="crystals per bin")
    return to_png(fig)
