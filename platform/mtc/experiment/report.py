"""An experiment's numbers: every trial, every cell (mean ± std over seeds), change vs single-task, the summary.

Pure pandas on trial records, so it is tested without Ray. A task's error is its test MAE (1 - ROC-AUC for a
binary task); std is the sample standard deviation over the cell's finished seeds. A setting's change against
the task alone (same fraction, basis and axes values) counts as significant only when the means differ by more
than the two cells' spreads together: |mean_a - mean_b| > std_a + std_b. With several training fractions, every
cell below the largest is also compared with each task alone on the largest fraction (data efficiency: does a
multitask model on half the data match a single-task model on all of it?).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mtc.experiment.spec import ExperimentSpec, Setting, point_key
from mtc.tasks import TaskSpec, served
from mtc.train.metrics import metric_key, task_error

FINISHED, ERROR, NOT_STARTED = "finished", "error", "not started"
SIGNIFICANCE_RULE = (
    "significant (*) only when |Δ mean| > std_a + std_b: the means differ by more than the two cells' spreads "
    "over seeds together (sample std)"
)


@dataclass
class TrialRecord:
    """One trial as the report sees it: its Tune point, how it ended, its final (test) metrics, its MLflow run and
    its model's parameter count (the run's ``n_parameters``)."""

    trial_id: str
    point: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    parameters: int | None = None


@dataclass
class ExperimentReport:
    trials: pd.DataFrame
    cells: pd.DataFrame
    summary: str
    tasks: list[TaskSpec]


def error_name(task: TaskSpec) -> str:
    """The error a task is compared on: ``mae``, or ``1-auc`` for a binary task."""
    return "1-auc" if task.kind == "binary" else "mae"


def trial_values(metrics: Mapping[str, float], tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """A trial's report columns from its final metrics: each task's test error and Spearman ρ, the metal AUC.

    The metal/non-metal AUC is the ``is_metal`` task's when the model has one, else the band-gap head's
    (``metal_auc``: metals ranked by lowest predicted gap); NaN when it has neither.
    """
    values: dict[str, float] = {}
    for task in tasks:
        test = {m: metrics[k] for m in ("mae", "auc", "spearman") if (k := metric_key("test", task.name, m)) in metrics}
        values[f"{task.name} {error_name(task)}"] = task_error(task, test)
        if task.kind == "regression":
            values[f"{task.name} spearman"] = test.get("spearman", math.nan)
    binary = [t.name for t in tasks if t.kind == "binary" and t.column == "band_gap"]
    gap = [t.name for t in tasks if t.kind == "regression" and t.column == "band_gap"]
    key = metric_key("test", binary[0], "auc") if binary else metric_key("test", gap[0], "metal_auc") if gap else ""
    values["metal auc"] = float(metrics.get(key, math.nan))
    return values


def trials_table(spec: ExperimentSpec, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per trial: the point, status, parameters, the values of ``trial_values`` (NaN unless finished), the
    run id."""
    settings = {s.name: s for s in spec.all_settings()}
    tasks = spec.base_config().tasks
    rows = []
    for record in records:
        point, setting = record.point, settings[record.point["setting"]]
        row = {
            "trial": record.trial_id,
            "status": record.status,
            "setting": setting.name,
            "tasks": len(setting.tasks),
            "fraction": point["fraction"],
            "epochs": point["epochs"],
            "seed": point["seed"],
            **point.get("axes", {}),
            "parameters": record.parameters if record.parameters is not None else math.nan,
        }
        own = [t for t in tasks if t.name in setting.tasks]
        row.update(trial_values(record.metrics if record.status == FINISHED else {}, own))
        row["run_id"] = record.run_id or ""
        rows.append(row)
    return pd.DataFrame(rows)


def cells_table(spec: ExperimentSpec, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per cell: its model's parameter count, mean, std and count over its finished seeds, and each task's
    change vs alone (a comparison at equal steps is fair in size only where the parameters say so).

    ``<task> rel change`` is (mean - alone mean) / alone mean, ``<task> significant`` the rule of this module;
    both are empty for a single-task cell and where the task alone was not run. ``<task> vs full data`` and
    ``<task> significant vs full data`` compare a cell below the largest fraction with the task alone on the
    largest (the task alone included); they are empty on the largest fraction.
    """
    tasks = spec.base_config().tasks
    settings = {s.name: s for s in spec.all_settings()}
    by_key = {point_key(r.point): r for r in records if r.status == FINISHED}
    rows = []
    for cell in spec.cells():
        setting = settings[cell.setting]
        done = [by_key[k] for s in spec.seeds if (k := point_key(cell.point(s))) in by_key]
        own = [t for t in tasks if t.name in setting.tasks]
        values = pd.DataFrame([trial_values(r.metrics, own) for r in done], columns=list(trial_values({}, own)))
        row = {
            "setting": cell.setting,
            "tasks": len(setting.tasks),
            "basis": cell.basis,
            "fraction": cell.fraction,
            "epochs": cell.epochs,
            **dict(cell.axes),
            "seeds": len(done),
            "parameters": next((r.parameters for r in done if r.parameters is not None), math.nan),
        }
        for column in values.columns:
            row[f"{column} mean"] = float(values[column].mean()) if len(values) else math.nan
            row[f"{column} std"] = float(values[column].std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    _add_changes(table, settings, tasks, list(spec.axes))
    if len(spec.fractions) > 1:
        _add_changes(table, settings, tasks, list(spec.axes), full_data=max(spec.fractions))
    return table


def _add_changes(
    table: pd.DataFrame,
    settings: Mapping[str, Setting],
    tasks: Sequence[TaskSpec],
    axes: list[str],
    full_data: float | None = None,
) -> None:
    """Each task's change vs the task alone at the same fraction, or (``full_data``: the largest fraction) vs the
    task alone on that fraction, for the cells below it."""
    keys = ["basis", "fraction", *axes]
    suffix = "" if full_data is None else " vs full data"
    for task in tasks:
        mean, std = f"{task.name} {error_name(task)} mean", f"{task.name} {error_name(task)} std"
        change, significant = f"{task.name} rel change{suffix}", f"{task.name} significant{suffix}"
        table[change], table[significant] = math.nan, None
        if mean not in table or task.name not in settings or not settings[task.name].is_single_task:
            continue
        alone = table[table["setting"] == task.name].set_index(keys)[[mean, std]]
        for i, row in table.iterrows():
            itself = row["setting"] == task.name if full_data is None else row["fraction"] == full_data
            if itself or pd.isna(row[mean]):
                continue
            at = {**row[keys].to_dict(), **({} if full_data is None else {"fraction": full_data})}
            reference = alone.loc[tuple(at[k] for k in keys)]
            if pd.isna(reference[mean]):
                continue
            delta = row[mean] - reference[mean]
            table.at[i, change] = delta / reference[mean]
            table.at[i, significant] = bool(abs(delta) > row[std] + reference[std])  # NaN spread: never


def summary_markdown(spec: ExperimentSpec, cells: pd.DataFrame, name: str) -> str:
    """A table per basis: each task's error alone (mean ± std), then each other setting's change vs alone."""
    tasks = [t for t in spec.base_config().tasks if t.name in spec.task_names()]
    varied = ["fraction"] * (len(spec.fractions) > 1) + list(spec.axes)
    lines = [
        f"# Experiment {name}",
        "",
        "A task alone: its test error, mean ± std over seeds. Other settings: each task's relative change of test "
        "error vs that task alone (same fraction, basis and axes; negative: sharing helped), or their own test error "
        f"where the experiment has no such single-task cell; {SIGNIFICANCE_RULE}.",
        "",
    ]
    for basis in spec.bases:
        part = cells[cells["basis"] == basis]
        header = ["setting", *varied, "seeds", "parameters", *(f"{t.name} ({error_name(t)})" for t in tasks)]
        rows = []
        for _, row in part.iterrows():
            size = f"{int(row['parameters']):,}" if _finite(row["parameters"]) else "–"
            label = [row["setting"], *(str(row[k]) for k in varied), str(row["seeds"]), size]
            if row["tasks"] == 1 and row["setting"] in spec.task_names():
                rows.append(label + [_mean_std(row, t) if t.name == row["setting"] else "" for t in tasks])
            else:
                rows.append(label + [_change_or_error(row, t) for t in tasks])
        lines += [f"## {basis.replace('_', ' ')}", "", *_markdown_table(header, rows), ""]
    if len(spec.fractions) > 1:
        lines += _data_efficiency(spec, cells, tasks)
    lines += _what_to_serve(spec, cells, tasks)
    return "\n".join(lines)


def _what_to_serve(spec: ExperimentSpec, cells: pd.DataFrame, tasks: Sequence[TaskSpec]) -> list[str]:
    """Which setting to serve each task from, per basis (and fraction and axes values where they vary): the answer a
    user runs the experiment for, by the report's rule."""
    varied = ["fraction"] * (len(spec.fractions) > 1) + list(spec.axes)
    lines = [
        "## what to serve",
        "",
        "Each task's setting: the one with the lowest mean test error among those that beat the task alone beyond the "
        "seeds' spread; where none does, the lowest mean test error of all. A shared setting within the spread "
        "serves the task as well as alone, not shown better.",
        "",
    ]
    rows = []
    for _, part in cells.groupby(["basis", *varied], sort=False, dropna=False):  # a null axis value is a value
        label = [part["basis"].iloc[0].replace("_", " "), *(str(part[k].iloc[0]) for k in varied)]
        rows += [label + row for task in served(tasks) if (row := _serve_row(part, task))]
    header = ["basis", *varied, "task", "use", "error", "vs alone", "why"]
    return [*lines, *_markdown_table(header, rows), ""]


def _serve_row(cells: pd.DataFrame, task: TaskSpec) -> list[str]:
    """[task, setting to use, its error, its change vs alone, why] among ``cells`` (one basis, fraction and axes
    values); empty when no finished cell has the task."""
    mean = f"{task.name} {error_name(task)} mean"
    has = cells[cells[mean].notna()] if mean in cells else cells.iloc[:0]
    if has.empty:
        return []
    is_alone = (has["setting"] == task.name) & (has["tasks"] == 1)
    shown = has[has[f"{task.name} significant"].eq(True) & (has[f"{task.name} rel change"] < 0)]
    best = (shown if len(shown) else has).sort_values(mean).iloc[0]
    if not is_alone.any():
        return [task.name, best["setting"], _mean_std(best, task), "–", "no single-task cell to compare with"]
    if len(shown):
        return [task.name, best["setting"], _mean_std(best, task), _change(best, task), "beats alone: sharing pays"]
    if best["setting"] != task.name:
        return [task.name, best["setting"], _mean_std(best, task), _change(best, task), "as good as alone"]
    others = has[~is_alone].sort_values(mean)
    if others.empty:
        return [task.name, "alone", _mean_std(best, task), "", "no other setting learns it"]
    closest = others.iloc[0]
    why = f"no setting beats it; closest: {closest['setting']} {_change(closest, task)}"
    return [task.name, "alone", _mean_std(best, task), "", why]


def _data_efficiency(spec: ExperimentSpec, cells: pd.DataFrame, tasks: Sequence[TaskSpec]) -> list[str]:
    """Every cell below the largest fraction against each task alone on the largest."""
    full = max(spec.fractions)
    lines = [
        "## data efficiency",
        "",
        f"Each cell below fraction {full:g}: each task's relative change of test error vs that task alone on fraction "
        f"{full:g} (same basis and axes; negative: less data did better); significant (*) by the same rule.",
        "",
    ]
    header = ["setting", "basis", "fraction", *spec.axes, "seeds", *(f"{t.name} ({error_name(t)})" for t in tasks)]
    part = cells[cells["fraction"] < full]
    rows = [
        [
            row["setting"],
            row["basis"].replace("_", " "),
            str(row["fraction"]),
            *(str(row[k]) for k in spec.axes),
            str(row["seeds"]),
            *(_change(row, t, " vs full data") for t in tasks),
        ]
        for _, row in part.iterrows()
    ]
    return [*lines, *_markdown_table(header, rows), ""]


def _mean_std(row: Mapping[str, Any], task: TaskSpec) -> str:
    mean, std = row.get(f"{task.name} {error_name(task)} mean"), row.get(f"{task.name} {error_name(task)} std")
    return f"{mean:.4g} ± {std:.2g}" if _finite(mean) and _finite(std) else f"{mean:.4g}" if _finite(mean) else "–"


def _change(row: Mapping[str, Any], task: TaskSpec, suffix: str = "") -> str:
    value = row.get(f"{task.name} rel change{suffix}")
    if not _finite(value):
        return "–"
    return f"{value:+.1%}" + (" *" if row.get(f"{task.name} significant{suffix}") is True else "")


def _change_or_error(row: Mapping[str, Any], task: TaskSpec) -> str:
    """The change vs the task alone; the error itself (mean ± std) where there is no single-task cell to compare."""
    return _change(row, task) if _finite(row.get(f"{task.name} rel change")) else _mean_std(row, task)


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def build_report(spec: ExperimentSpec, records: Sequence[TrialRecord], name: str) -> ExperimentReport:
    """The tables and the summary of ``records`` (trials that did not finish count in trials.csv only)."""
    cells = cells_table(spec, records)
    tasks = [t for t in spec.base_config().tasks if t.name in spec.task_names()]
    return ExperimentReport(trials_table(spec, records), cells, summary_markdown(spec, cells, name), tasks)
