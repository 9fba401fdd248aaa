"""The experiment driver: checks, the parent MLflow run, the grid as Tune trials, child runs, the report.

Every trial is a full training run (``mtc.tune.trial.run_trial``: its own MLflow child run); the grid is one Tune
grid search without early stopping, so a trial's final report holds its test metrics. Tune's state lives beside
the tune's (``mtc.tune.fitting``), which is what ``--resume`` restores: finished trials are not run again.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ray import tune

from mtc import tracking
from mtc.config import TrainConfig, dump_yaml
from mtc.data.shards import read_manifest
from mtc.experiment.plots import report_plots
from mtc.experiment.report import ERROR, FINISHED, NOT_STARTED, ExperimentReport, TrialRecord, build_report
from mtc.experiment.spec import ExperimentSpec, parse_spec, point_key, widen
from mtc.train.datasets import prepare_splits
from mtc.train.loop import build_model
from mtc.tune.callbacks import Echo, ReleaseStoppedRuns, TrialEcho, budget_spent
from mtc.tune.child_runs import child_runs, new_parent, reopen
from mtc.tune.fitting import TuneInterrupted, checked_name, deadline_of, fit, restored_rounds, round_name, run_config
from mtc.tune.trial import plan_concurrency, trainable, trial_dirname

STATE_TAG = "mtc.experiment.state"  # complete, or budget spent (--resume runs the rest)
WIDENED_TAG = "mtc.experiment.widened"  # the --set pairs each widening --resume added (params stay as started)
SPEC_PATH = "experiment/spec.yaml"  # the parent run's copy of the spec, read back by --resume


@dataclass
class ExperimentOutcome:
    name: str
    parent_run_id: str
    records: list[TrialRecord]
    report: ExperimentReport
    not_started: int  # trials the time budget left for a resume


def start_experiment(
    shards: Path,
    spec: ExperimentSpec,
    *,
    name: str | None = None,
    max_concurrent: int = 1,
    workers_per_trial: int | None = None,
    budget_minutes: float | None = None,
    echo: Echo = print,
) -> ExperimentOutcome:
    """A new experiment of ``spec`` on the graph shards: checks, parent run, the trials, the report."""
    import mlflow
    import ray

    if workers_per_trial is not None:
        scaling = {**spec.train.get("scaling", {}), "workers": workers_per_trial}
        spec = parse_spec({**spec.model_dump(mode="json"), "train": {**spec.train, "scaling": scaling}}, "--workers")
    base = spec.base_config()
    concurrency = plan_concurrency(max_concurrent, base.scaling, ray.cluster_resources(), echo, base.compile)
    shards = Path(shards).resolve()
    _check_data(shards, spec)
    name = checked_name(name or time.strftime("experiment-%Y%m%d-%H%M%S"), "experiment")
    client = mlflow.MlflowClient(tracking.configure())
    points, cells = spec.points(), spec.cells()
    params = {
        "trials": len(points),
        "cells": len(cells),
        "settings": ",".join(s.name for s in spec.all_settings()),
        "fractions": ",".join(f"{f:g}" for f in spec.fractions),
        "bases": ",".join(spec.bases),
        "seeds": ",".join(map(str, spec.seeds)),
        "axes": ",".join(spec.axes) or "-",
        "epochs": base.epochs,
        "max_concurrent": concurrency,
        "workers_per_trial": base.scaling.workers,
    }
    run_id = new_parent(client, "experiment", name, base.experiment, shards, params, (SPEC_PATH, dump_yaml(spec)))
    echo(
        f"experiment {name}: {len(points)} trials ({len(cells)} cells over {len(spec.seeds)} seeds; single-task "
        f"trials serve both bases), {concurrency} at a time; MLflow parent run {run_id}; continue it with "
        f"mtc experiment --resume {name}"
    )
    _echo_sizes(spec, shards, echo)
    return _drive(client, run_id, name, shards, spec, concurrency, budget_minutes, echo)


def resume_experiment(
    name: str,
    *,
    shards: Path | None = None,
    budget_minutes: float | None = None,
    overrides: Sequence[str] = (),
    echo: Echo = print,
) -> ExperimentOutcome:
    """Continue experiment ``name``: finished trials are kept; unfinished, failed and unstarted ones run.

    ``overrides`` (``--set`` pairs) may add trials, never drop or change one (``widen``): more seeds where a difference
    sits near the seeds' spread, another setting beside the ones measured. The report then covers them all.
    """
    start = "mtc experiment SPEC.yaml --data ..."
    stored: list[ExperimentSpec] = []

    def parse(data: Mapping[str, Any], source: str) -> ExperimentSpec:
        stored.append(parse_spec(data, source))
        return widen(stored[0], overrides, source) if overrides else stored[0]

    run = reopen("experiment", name, SPEC_PATH, start, parse, _check_data, shards)
    echo(f"resuming experiment {name} (MLflow parent run {run.run_id}): finished trials are kept")
    if overrides:
        added = len(run.spec.points()) - len(stored[0].points())
        run.client.log_text(run.run_id, dump_yaml(run.spec), SPEC_PATH)  # what a later --resume continues
        widened = run.client.get_run(run.run_id).data.tags.get(WIDENED_TAG)
        run.client.set_tag(run.run_id, WIDENED_TAG, "; ".join(filter(None, [widened, " ".join(overrides)])))
        echo(f"--set {' '.join(overrides)} adds {added} trial(s): {len(run.spec.points())} in all")
        _echo_sizes(run.spec, run.shards, echo)
    return _drive(run.client, run.run_id, name, run.shards, run.spec, run.concurrency, budget_minutes, echo)


def model_sizes(spec: ExperimentSpec, radius: float) -> dict[str, int]:
    """Each setting's parameter count (per axes values where they change it), so a comparison at equal steps shows
    the sizes it compares before any trial starts."""
    sizes: dict[str, int] = {}
    for cell in spec.cells():
        label = cell.setting + "".join(f" {k}={v}" for k, v in cell.axes)
        if label not in sizes:
            sizes[label] = build_model(spec.trial_config(cell.point(spec.seeds[0])), radius).n_parameters()
    return sizes


def _echo_sizes(spec: ExperimentSpec, shards: Path, echo: Echo) -> None:
    sizes = model_sizes(spec, read_manifest(shards)["params"]["radius"])
    echo("parameters: " + ", ".join(f"{label} {n:,}" for label, n in sizes.items()))


def _check_data(shards: Path, spec: ExperimentSpec) -> None:
    """Every label column exists and every fraction leaves a batch per worker, before any trial starts."""
    seen = set()
    for cell in spec.cells():
        config = spec.trial_config(cell.point(spec.seeds[0]))
        key = (tuple(t.name for t in config.tasks), config.split.train_fraction)
        if key not in seen:
            seen.add(key)
            prepare_splits(shards, config)


def _drive(
    client,
    run_id: str,
    name: str,
    shards: Path,
    spec: ExperimentSpec,
    concurrency: int,
    budget_minutes: float | None,
    echo: Echo,
) -> ExperimentOutcome:
    """The trials, then child-run bookkeeping and the report; the parent run ends FINISHED, or KILLED when the
    budget left trials unstarted (``--resume`` continues it)."""
    fn = trainable(shards, partial(_trial_config, spec), None, run_id, name, deadline_of(budget_minutes))
    try:
        grid = _fit_rounds(name, fn, spec, concurrency, echo)
        records = _records(client, run_id, name, grid)
        report = build_report(spec, records, name)
        _log_report(client, run_id, report, report_plots(report, list(spec.bases), list(spec.axes)))
    except TuneInterrupted:
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    not_started = sum(r.status == NOT_STARTED for r in records)
    client.set_tag(run_id, STATE_TAG, "budget spent" if not_started else "complete")
    client.set_terminated(run_id, status="KILLED" if not_started else "FINISHED")
    return ExperimentOutcome(name, run_id, records, report, not_started)


def _fit_rounds(name: str, fn, spec: ExperimentSpec, concurrency: int, echo: Echo) -> list:
    """Tune results of every point, latest round last: the rounds so far (restored; an interrupted one runs on),
    then a new round of the points none has finished (unstarted for the budget, failed, or all at the start).

    A round is one Tune grid search (``name``, then ``name.1``, ...); rounds replace Tune's ``restart_errored``,
    which would start every unstarted trial at once and overfill the cluster.
    """
    rounds = restored_rounds(name, fn, f"mtc experiment --resume {name}")
    results, k = [r for round_results in rounds for r in round_results], len(rounds)
    finished = {point_key(r.config["point"]) for r in results if r.error is None and "best_epoch" in (r.metrics or {})}
    missing = [p for p in spec.points() if point_key(p) not in finished]
    if missing:
        if k:
            echo(f"round {k + 1}: {len(missing)} trial(s) not finished so far")
        results += list(
            fit(
                round_name(name, k),
                fn,
                lambda trainable: tune.Tuner(
                    trainable,
                    param_space={"point": tune.grid_search(missing)},
                    tune_config=tune.TuneConfig(
                        max_concurrent_trials=concurrency, reuse_actors=False, trial_dirname_creator=trial_dirname
                    ),
                    run_config=run_config(
                        round_name(name, k),
                        [TrialEcho(echo, "trial", len(missing), partial(trial_line, spec)), ReleaseStoppedRuns()],
                    ),
                ),
                len(missing),
                f"mtc experiment --resume {name}",
            )
        )
    return results


def _trial_config(spec: ExperimentSpec, config: Mapping[str, Any], run_name: str) -> TrainConfig:
    return spec.trial_config(config["point"], run_name)


def trial_line(spec: ExperimentSpec, config: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """``all, fraction 0.5, 2 epochs, seed 1: test MAE formation_energy_per_atom 0.21, band_gap 0.62``."""
    point = config["point"]
    axes = "".join(f", {k} {v}" for k, v in point.get("axes", {}).items())
    tasks = spec.trial_config(point).tasks
    maes = [f"{t.name} {result[k]:.4g}" for t in tasks if (k := f"test/{t.name}/mae") in result]
    epochs = f"{point['epochs']} epoch{'s' * (point['epochs'] != 1)}"
    where = f"{point['setting']}, fraction {point['fraction']:g}, {epochs}, seed {point['seed']}{axes}"
    return f"{where}: test MAE {', '.join(maes)}" if maes else f"{where}: no test metrics"


def _records(client, run_id: str, name: str, grid) -> list[TrialRecord]:
    """A record per point from Tune's results (its latest trial); each child run gets the point as tags."""
    children = child_runs(client, run_id)
    records: dict[tuple, TrialRecord] = {}
    for result in grid:
        if result.config is None:
            continue  # a trial whose point not even Tune's state kept: nothing to record it under
        trial_id = Path(result.path).name
        metrics = result.metrics or {}
        if result.error is not None:
            status = NOT_STARTED if budget_spent(result.error) else ERROR
        else:
            status = FINISHED if "best_epoch" in metrics else ERROR
        child = children.get(f"{name}-{trial_id}")
        point = dict(result.config["point"])
        test = {k: float(v) for k, v in metrics.items() if k.startswith("test/") and math.isfinite(float(v))}
        run_id = child.info.run_id if child else None
        size = int(child.data.params["n_parameters"]) if child and "n_parameters" in child.data.params else None
        records[point_key(point)] = TrialRecord(trial_id, point, status, test, run_id, size)
        if child is not None:
            _tag_child(client, child.info.run_id, trial_id, point, status)
    return list(records.values())


def _tag_child(client, run_id: str, trial_id: str, point: Mapping[str, Any], status: str) -> None:
    tags = {
        "mtc.experiment.trial": trial_id,
        "mtc.experiment.status": status,
        **{f"mtc.experiment.{k}": str(point[k]) for k in ("setting", "fraction", "epochs", "seed")},
        **{f"mtc.experiment.axis.{k}": str(v) for k, v in point.get("axes", {}).items()},
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _log_report(client, run_id: str, report: ExperimentReport, plots: Mapping[str, bytes]) -> None:
    """``report/`` of the parent run: cells.csv, trials.csv, summary.md and the plots."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        report.cells.to_csv(folder / "cells.csv", index=False)
        report.trials.to_csv(folder / "trials.csv", index=False)
        (folder / "summary.md").write_text(report.summary)
        for file, png in plots.items():
            (folder / file).write_bytes(png)
        client.log_artifacts(run_id, str(folder), "report")
    client.log_metric(run_id, "trials_finished", float((report.trials["status"] == FINISHED).sum()))
