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


def print_calibration(rows: Sequence[tuple[str, Mapping[str, float]]], units: Mapping[str, str]) -> None:
    """An ensemble's test calibration per regression task: the mean member's MAE, coverage, area, Spearman ρ."""
    rows = [(task, m) for task, m in rows if "coverage_90" in m]
    short = abbreviations([task for task, _ in rows])
    table = Table(title="test calibration (intervals fitted on validation)")
    for column in ("task", "member MAE", "cover 68%", "90%", "95%", "miscal. area", "ρ(|err|, std)"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for task, m in rows:
        table.add_row(
            f"{short[task]} ({units[task]})" if units.get(task) else short[task],
            f"{m['member_mae']:.4f}",
            *(f"{m[k]:.3f}" for k in ("coverage_68", "coverage_90", "coverage_95", "miscalibration_area")),
            f"{m['spread_spearman']:.3f}",
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


def with_spread(table):
    """Predictions for a terminal: ``<task>`` and ``<task>_std`` of an ensemble as one ``value ± std`` text column,
    bounds (``_lo``, ``_hi``) and ``_probability_std`` left to the written table. Other tables pass unchanged."""
    import pyarrow as pa

    names = table.column_names
    spread = [n.removesuffix("_std") for n in names if n.endswith("_std") and n.removesuffix("_std") in names]
    if not spread:
        return table
    dropped = {f"{n}{s}" for n in spread for s in ("_std", "_lo", "_hi")} | {
        n for n in names if n.endswith("_probability_std")
    }
    columns = {}
    for name in names:
        if name in dropped:
            continue
        if name in spread:
            values, stds = table.column(name).to_pylist(), table.column(f"{name}_std").to_pylist()
            columns[name] = pa.array(
                [None if v is None else f"{v:.4g} ± {s:.2g}" for v, s in zip(values, stds, strict=True)], pa.string()
            )
        else:
            columns[name] = table.column(name)
    return pa.table(columns)


def _print_legend(short: Mapping[str, str], units: Mapping[str, str] | None) -> None:
    names = legend(short, units)
    if names:
        console.print(names, markup=False, soft_wrap=True)
