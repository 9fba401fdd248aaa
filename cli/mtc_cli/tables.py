"""Result tables that fit 80 columns: task names shortened (fepa, bg), with a legend under the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from mtc_cli.common import abbreviations, console, legend

METRICS = ("mae", "rmse", "r2", "spearman")


def print_metrics(title: str, rows: Sequence[tuple[str, Mapping[str, float]]], units: Mapping[str, str]) -> None:
    """One row per task: MAE, RMSE (in the task's unit, named in the first column), R², Spearman ρ, AUC."""
    short = abbreviations([task for task, _ in rows])
    table = Table(title=title)
    for column in ("task", "MAE", "RMSE", "R²", "Spearman", "AUC / metal AUC"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for task, m in rows:
        auc = m.get("auc", m.get("metal_auc"))
        table.add_row(
            f"{short[task]} ({units[task]})" if units.get(task) else short[task],
            *(f"{m[k]:.4f}" if k in m else "" for k in METRICS),
            f"{auc:.3f}" if auc is not None else "",
        )
    console.print(table)
    _print_legend(short, units)


def print_predictions(table, title: str, units: Mapping[str, str] | None = None) -> None:
    """A pyarrow table of predictions (id, one column per task, ...) with short column names."""
    short = abbreviations(table.column_names)
    view = Table(title=title)
    for name in table.column_names:
        view.add_column(short[name], justify="left" if name in ("id", "error") else "right")
    for row in table.to_pylist():
        view.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(view)
    _print_legend(short, units)


def _print_legend(short: Mapping[str, str], units: Mapping[str, str] | None) -> None:
    names = legend(short, units)
    if names:
        console.print(names, markup=False, soft_wrap=True)
