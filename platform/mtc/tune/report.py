"""The report of a tune: ranked trials, the best config as YAML, task affinity (table + heatmap), in MLflow."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtc.config import TrainConfig, dump_yaml
from mtc.tune.search import NO_AUXILIARY, TASK_SEP, grouping_label

FINISHED, STOPPED, ERROR, NOT_STARTED = "finished", "stopped", "error", "not started"


@dataclass
class TrialRecord:
    """One trial as the report sees it. ``errors``: validation error per task behind ``objective``."""

    trial_id: str
    point: dict[str, Any]
    config: TrainConfig
    status: str
    epochs: int
    objective: float
    errors: dict[str, float] = field(default_factory=dict)
    relative: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class TuneReport:
    """``ranked`` has one column per ``choices`` key (the space's width/depth choices) besides the fixed ones."""

    ranked: pd.DataFrame
    best: TrialRecord | None
    best_yaml: str
    affinity: pd.DataFrame
    heatmap: bytes | None
    choices: list[str] = field(default_factory=list)


def describe(config: TrainConfig) -> dict[str, str]:
    """What a trial varied, as short strings: grouping, loss, lr, and its auxiliary tasks where it has any."""
    names = [t.name for t in config.tasks]
    loss = config.loss.strategy
    if config.loss.weights:
        loss += " " + "/".join(f"{config.loss.weights.get(n, 1.0):.2f}" for n in names)
    auxiliary = [t.name for t in config.tasks if t.auxiliary]
    return {
        "grouping": grouping_label(config.model.groups or [names]),
        "loss": loss,
        "lr": f"{config.optim.lr:.3g}",
        **({"auxiliary": TASK_SEP.join(auxiliary)} if auxiliary else {}),
    }


def _sort_key(trial: TrialRecord) -> tuple:
    rank_of = {FINISHED: 0, STOPPED: 1, ERROR: 2, NOT_STARTED: 3}
    objective = trial.objective if math.isfinite(trial.objective) else math.inf
    return rank_of[trial.status], objective, -trial.epochs


def ranked_table(trials: Sequence[TrialRecord], choices: Sequence[str] = ()) -> pd.DataFrame:
    """Finished trials by objective, then trials stopped early, failed ones, unstarted ones; one column per task."""
    rows = []
    for rank, trial in enumerate(sorted(trials, key=_sort_key), start=1):
        row = {
            "rank": rank,
            "trial": trial.trial_id,
            "objective": trial.objective,
            "status": trial.status,
            "epochs": trial.epochs,
            **describe(trial.config),
        }
        row.update({key: _dotted(trial.config, key) for key in choices})
        row.update({f"{task} rel": value for task, value in trial.relative.items()})
        row.update({f"{task} val error": value for task, value in trial.errors.items()})
        row["run_id"] = trial.run_id or ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if "auxiliary" in table:  # some trials trained auxiliary tasks: the others trained none
        table["auxiliary"] = table["auxiliary"].fillna(NO_AUXILIARY)
    return table


def _dotted(config: TrainConfig, key: str) -> Any:
    node: Any = config.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def affinity(trials: Sequence[TrialRecord]) -> pd.DataFrame:
    """Each task's validation error relative to alone, per group it trained in (best and count over finished trials).

    Columns: task, group (its tasks joined by ``+``), trials, best_relative_error.
    """
    columns = ["task", "group", "trials", "best_relative_error"]
    rows = []
    for trial in trials:
        if trial.status != FINISHED:
            continue
        order = {t.name: k for k, t in enumerate(trial.config.tasks)}
        for group in trial.config.model.groups or [list(order)]:
            key = (len(group), [order[t] for t in group])
            rows.extend(
                {
                    "task": task,
                    "group": TASK_SEP.join(group),
                    "key": (*key, order[task]),
                    "relative_error": trial.relative.get(task, math.nan),
                }
                for task in group
            )
    frame = pd.DataFrame(rows, columns=["task", "group", "key", "relative_error"]).dropna(subset=["relative_error"])
    if frame.empty:
        return pd.DataFrame(columns=columns)
    table = (
        frame.groupby(["task", "group"], sort=False)
        .agg(key=("key", "first"), trials=("relative_error", "size"), best_relative_error=("relative_error", "min"))
        .reset_index()
    )
    ordered = sorted(range(len(table)), key=lambda i: table["key"].iloc[i])  # small groups first, in task order
    return table.iloc[ordered][columns].reset_index(drop=True)


def affinity_heatmap(table: pd.DataFrame, tasks: Sequence[str]) -> bytes | None:
    """Tasks x groups, coloured around 1 (blue: better than alone, red: worse); None for an empty table."""
    if table.empty:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    from mtc.train.plots import to_png

    grid = table.pivot(index="task", columns="group", values="best_relative_error")
    grid = grid.reindex(index=[t for t in tasks if t in grid.index], columns=list(dict.fromkeys(table["group"])))
    values = grid.to_numpy(dtype=float)
    spread = max(0.05, float(abs(pd.Series(values.ravel()).dropna() - 1).max()))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * grid.shape[1], 1.2 + 0.6 * grid.shape[0]))
    image = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 1 - spread, 1 + spread), aspect="auto")
    for (i, j), value in pd.DataFrame(values).stack().items():
        if not math.isfinite(value):
            continue  # the task is not in that group
        dark = abs(value - 1) > 0.6 * spread
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(grid.shape[1]), [c.replace(TASK_SEP, "+\n") for c in grid.columns], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    ax.set_xlabel("group the task trained in (shared trunk)")
    ax.set_title("validation error / single-task reference (best over trials; < 1: helped)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return to_png(fig)


def best_yaml(best: TrialRecord | None, tune_name: str) -> str:
    """The best finished trial's resolved config, ready for ``mtc train --config``."""
    if best is None:
        return ""
    header = (
        f"# best trial {best.trial_id} of tune {tune_name}: objective {best.objective:.4f} "
        f"(mean validation error / single-task reference)\n# train it: mtc train --data SHARDS --config "
        "best_config.yaml\n"
    )
    return header + dump_yaml(best.config.model_copy(update={"run_name": None}))


def build_report(trials: Sequence[TrialRecord], tune_name: str, choices: Sequence[str] = ()) -> TuneReport:
    """Everything the parent run and the terminal show."""
    finished = sorted((t for t in trials if t.status == FINISHED and math.isfinite(t.objective)), key=_sort_key)
    best = finished[0] if finished else None
    tasks = [t.name for t in trials[0].config.tasks] if trials else []
    table = affinity(trials)
    return TuneReport(
        ranked_table(trials, choices),
        best,
        best_yaml(best, tune_name),
        table,
        affinity_heatmap(table, tasks),
        list(choices),
    )


def log_report(client, run_id: str, report: TuneReport) -> None:
    """Artifacts under ``report/`` of the parent run, and the best objective as a metric."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        report.ranked.to_csv(folder / "trials.csv", index=False)
        report.affinity.to_csv(folder / "affinity.csv", index=False)
        if report.best_yaml:
            (folder / "best_config.yaml").write_text(report.best_yaml)
        if report.heatmap:
            (folder / "affinity.png").write_bytes(report.heatmap)
        client.log_artifacts(run_id, str(folder), "report")
    if report.best is not None:
        client.log_metric(run_id, "best_objective", report.best.objective)
        client.set_tag(run_id, "mtc.tune.best_trial", report.best.trial_id)
        if report.best.run_id:
            client.set_tag(run_id, "mtc.tune.best_run", report.best.run_id)
