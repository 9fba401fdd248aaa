"""An experiment's figures: test error vs training fraction per task, and change vs single-task as a heatmap."""

from __future__ import annotations

import math

import pandas as pd

from mtc.experiment.report import ExperimentReport, error_name


def error_vs_fraction(report: ExperimentReport, basis: str, axes: list[str]) -> bytes | None:
    """One panel per task: mean test error vs training fraction, one line per setting (and axes values), std bars."""
    import matplotlib.pyplot as plt

    from mtc.train.plots import to_png

    cells = report.cells[report.cells["basis"] == basis]
    if cells.empty:
        return None
    fig, panels = plt.subplots(1, len(report.tasks), figsize=(4.2 * len(report.tasks), 3.4), squeeze=False)
    for ax, task in zip(panels[0], report.tasks, strict=True):
        mean = f"{task.name} {error_name(task)} mean"
        if mean not in cells:
            continue
        for label, line in cells.dropna(subset=[mean]).groupby(["setting", *axes], sort=False):
            line = line.sort_values("fraction")
            name = " ".join(str(v) for v in (label if isinstance(label, tuple) else (label,)))
            ax.errorbar(
                line["fraction"],
                line[mean],
                yerr=line[mean.replace(" mean", " std")],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_title(task.name, fontsize=9)
        ax.set_xlabel("fraction of the training rows")
        ax.set_ylabel(f"test {error_name(task).upper()} {task.unit}".strip())
        if ax.get_legend_handles_labels()[0]:  # no finished cell of this task: no line to name
            ax.legend(fontsize=7)
    fig.suptitle(f"test error vs training data ({basis.replace('_', ' ')}; bars: std over seeds)", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def change_heatmap(report: ExperimentReport, basis: str, axes: list[str]) -> bytes | None:
    """Tasks x settings at the largest fraction: (error - error alone) / error alone, * where significant."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from mtc.train.plots import to_png

    cells = report.cells[report.cells["basis"] == basis]
    cells = cells[(cells["fraction"] == cells["fraction"].max()) & (cells["tasks"] > 1)] if not cells.empty else cells
    if cells.empty:
        return None
    columns = [" ".join([row["setting"], *(f"{k}={row[k]}" for k in axes)]) for _, row in cells.iterrows()]
    names = [t.name for t in report.tasks]
    values = cells[[f"{t} rel change" for t in names]].to_numpy(dtype=float).T
    marks = cells[[f"{t} significant" for t in names]].to_numpy().T
    finite = pd.Series(values.ravel()).dropna().abs()
    spread = max(0.01, float(finite.max()) if not finite.empty else 0.0)
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(columns), 1.2 + 0.6 * len(names)))
    image = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -spread, spread), aspect="auto")
    for i in range(len(names)):
        for j in range(len(columns)):
            if math.isfinite(values[i, j]):
                text = f"{values[i, j]:+.1%}" + ("*" if marks[i, j] is True else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), [c.replace(" ", "\n") for c in columns], fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fraction = cells["fraction"].iloc[0]
    ax.set_title(
        f"test error vs the task alone ({basis.replace('_', ' ')}, fraction {fraction:g}; blue: helped, * significant)",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    return to_png(fig)


def report_plots(report: ExperimentReport, bases: list[str], axes: list[str]) -> dict[str, bytes]:
    """File name -> PNG: ``error_vs_fraction_<basis>.png`` and ``change_vs_alone_<basis>.png`` per basis."""
    plots = {}
    for basis in bases:
        for stem, draw in (("error_vs_fraction", error_vs_fraction), ("change_vs_alone", change_heatmap)):
            png = draw(report, basis, axes)
            if png:
                plots[f"{stem}_{basis}.png"] = png
    return plots
