"""The MLflow side of a tune or experiment: its parent run (new, or reopened to resume), its child runs (one per
trial), tagged and closed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtc import tracking
from mtc.errors import MtcError
from mtc.tune.callbacks import budget_spent
from mtc.tune.fitting import checked_name, experiment_path
from mtc.tune.report import ERROR, FINISHED, NOT_STARTED, STOPPED, TrialRecord, describe
from mtc.tune.search import TuneSpace, relative_errors, trial_config


def find_parent(name: str, kind: str = "tune"):
    """The parent run of the ``kind`` (``tune`` or ``experiment``) named ``name``, or None."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`mtc.{kind}.name` = '{name}' and tags.`mtc.{kind}.kind` = 'parent'"
    runs = client.search_runs(experiments, query, max_results=1) if experiments else []
    return runs[0] if runs else None


def new_parent(
    client, kind: str, name: str, experiment: str, shards: Path, params: Mapping[str, Any], spec: tuple[str, str]
) -> str:
    """The parent run of a new ``kind`` named ``name``: tags, params and ``spec`` (artifact path, text), which
    ``--resume`` reads back. Raises MtcError when the name is taken. Returns the run id."""
    from ray import tune

    if find_parent(name, kind) is not None or tune.Tuner.can_restore(experiment_path(name)):
        raise MtcError(f"a {kind} named {name!r} exists; continue it with --resume {name}, or pick another --name")
    tags = {f"mtc.{kind}.name": name, f"mtc.{kind}.kind": "parent", "mtc.shards": str(shards)}
    run_id = client.create_run(tracking.experiment_id(experiment), run_name=name, tags=tags).info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, spec[1], spec[0])
    return run_id


@dataclass
class Reopened:
    """A tune or experiment to resume: its parent run (RUNNING again), spec, shards and concurrency."""

    client: Any
    run_id: str
    spec: Any
    shards: Path
    concurrency: int


def reopen(
    kind: str,
    name: str,
    spec_path: str,
    start: str,
    parse: Callable[..., Any],
    check: Callable[[Path, Any], None],
    shards: Path | None = None,
) -> Reopened:
    """Reopens the ``kind`` named ``name`` to resume it; MtcError naming ``start`` if there is none.

    Its spec is read back from the parent run's ``spec_path`` and parsed by ``parse(data, source=...)``; the shards
    are ``shards`` or the recorded ones. Before the parent run is set RUNNING again, the cluster must hold one trial
    and ``check(shards, spec)`` must pass (the data still fits the spec).
    """
    import mlflow
    import ray
    import yaml

    from mtc.tune.trial import plan_concurrency

    uri = tracking.configure()
    parent = find_parent(checked_name(name, kind), kind)
    if parent is None:
        raise MtcError(f"no {kind} named {name!r} in {uri}; start one with {start}")
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/{spec_path}")
    spec = parse(yaml.safe_load(text), source=f"{kind} {name}")
    shards = Path(shards or parent.data.tags["mtc.shards"]).resolve()
    base = spec.base_config()
    plan_concurrency(1, base.scaling, ray.cluster_resources(), compile_convs=base.compile)
    check(shards, spec)
    client = mlflow.MlflowClient(uri)
    client.update_run(parent.info.run_id, status="RUNNING")
    return Reopened(client, parent.info.run_id, spec, shards, int(parent.data.params.get("max_concurrent", 1)))


def finish_child_runs(
    client, run_id: str, name: str, space: TuneSpace, grid, references: Mapping[str, float]
) -> list[TrialRecord]:
    """Trial records from Tune's results; each child run gets the point as tags, the objective, a final status."""
    newest = child_runs(client, run_id)
    records = []
    for result in grid:
        trial_id = Path(result.path).name
        child = newest.get(f"{name}-{trial_id}")
        record = _record(space, result, trial_id, references, child.info.run_id if child else None)
        records.append(record)
        if child is not None:
            _tag_child(client, child, record)
    return records


def child_runs(client, run_id: str) -> dict[str, Any]:
    """The newest child run of each name; older attempts that an interruption cut short end KILLED."""
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    newest: dict[str, Any] = {}
    for child in children:
        if child.info.run_name in newest and child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, status="KILLED")
        newest.setdefault(child.info.run_name, child)
    return newest


def _record(
    space: TuneSpace, result, trial_id: str, references: Mapping[str, float], child_run_id: str | None
) -> TrialRecord:
    metrics = result.metrics or {}
    config = trial_config(space, result.config)
    if result.error is not None:
        status = NOT_STARTED if budget_spent(result.error) else ERROR
    else:
        status = FINISHED if "best_epoch" in metrics else STOPPED
    errors = {t: float(metrics.get(f"val_error/{t}", math.nan)) for t in space.scored_task_names()}
    epochs = int(metrics.get("training_iteration", 0)) - (status == FINISHED)  # the final report is no epoch
    return TrialRecord(
        trial_id,
        dict(result.config),
        config,
        status,
        epochs,
        float(metrics.get("objective", math.nan)),
        errors,
        relative_errors(errors, references),
        child_run_id,
    )


def _tag_child(client, child, record: TrialRecord) -> None:
    run_id = child.info.run_id
    tags = {
        "mtc.tune.trial": record.trial_id,
        "mtc.tune.status": record.status,
        **{f"mtc.tune.{k}": v for k, v in describe(record.config).items()},
        **{f"mtc.tune.point.{k}": str(v) for k, v in record.point.items()},
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if math.isfinite(record.objective):
        client.log_metric(run_id, "tune/objective", record.objective)
    for task, value in record.relative.items():
        if math.isfinite(value):
            client.log_metric(run_id, f"tune/relative_error/{task}", value)
    stopped_but_failed = record.status == STOPPED and child.info.status == "FAILED"  # its train() saw the actor die
    if child.info.status == "RUNNING" or stopped_but_failed:
        client.set_terminated(run_id, status="KILLED" if record.status == STOPPED else "FAILED")
