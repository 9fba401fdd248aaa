"""The tune driver: resource plan, parent MLflow run, single-task references, the Tuner, child runs, the report.

Each trial is a function that builds a TorchTrainer (``mtc.train.trainer.train``) and forwards every epoch's
report to Tune through ``ObjectiveCallback``, which adds the objective (mean validation error over tasks,
each divided by the task's single-task reference) so ASHA stops weak trials on it epoch by epoch.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from mtc import tracking
from mtc.config import ScalingConfig
from mtc.errors import MtcError
from mtc.tasks import TaskSpec
from mtc.train.trainer import DATA_CPUS, ResourceError, TrainingError, prepare_splits
from mtc.tune.report import ERROR, FINISHED, STOPPED, TrialRecord, TuneReport, build_report, describe, log_report
from mtc.tune.search import (
    TPE_STARTUP,
    TuneSpace,
    dump_space,
    first_points,
    objective,
    param_space,
    parse_space,
    reference_config,
    relative_errors,
    task_errors,
    trial_config,
)

TRIAL_CPUS = 0.01  # the trial function only drives; its Train workers reserve their own CPUs ({"CPU": 0} fails)
NAME_TAG, KIND_TAG = "mtc.tune.name", "mtc.tune.kind"
Echo = Callable[[str], None]


class TuneInterrupted(MtcError):
    """The tune stopped before every trial finished; ``--resume`` continues it."""


@dataclass
class TuneOutcome:
    name: str
    parent_run_id: str
    references: dict[str, float]
    trials: list[TrialRecord]
    report: TuneReport


def plan_concurrency(requested: int, scaling: ScalingConfig, cluster: Mapping[str, float]) -> int:
    """Trials that run at once: at most ``requested`` and what the cluster holds; ResourceError if not even one.

    A trial needs its workers' CPUs (and GPUs), 1 CPU left for its Ray Data pipeline and a sliver for itself.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
    n_workers = scaling.gpus or scaling.workers
    need = n_workers * scaling.cpus_per_worker + DATA_CPUS + TRIAL_CPUS
    if scaling.gpus and gpus < scaling.gpus:
        has = f"{gpus} GPU(s)" if gpus else f"no GPU ({cpus:g} CPUs)"
        raise ResourceError(
            f"--gpus-per-trial {scaling.gpus} needs {scaling.gpus} GPU(s) for one trial, but the Ray cluster has "
            f"{has}; lower --gpus-per-trial, use CPU trials (--gpus-per-trial 0), or point --address at a GPU cluster"
        )
    if need > cpus:
        raise ResourceError(
            f"one trial needs {n_workers} worker(s) x {scaling.cpus_per_worker:g} CPU + {DATA_CPUS:g} CPU for Ray "
            f"Data + {TRIAL_CPUS:g} CPU for the trial = {need:g} CPUs; the Ray cluster has {cpus:g}. "
            "Lower --workers-per-trial or scaling.cpus_per_worker"
        )
    holds = math.floor(cpus / need + 1e-9)
    if scaling.gpus:
        holds = min(holds, gpus // scaling.gpus)
    return max(1, min(requested, holds))


class ObjectiveCallback(TuneReportCallback):
    """Forwards each Ray Train report to Tune with ``val_error/<task>`` and, given references, ``objective``.

    An epoch report carries that epoch's errors. The final report (test metrics, ``best_epoch``) carries the
    errors of the best epoch (whose weights the run keeps) and ``min_val_error/<task>``, the lowest error each
    task reached (a reference run's reference). The final report has no ``epoch``, so ASHA ignores it.
    """

    def __init__(self, tasks: Sequence[TaskSpec], references: Mapping[str, float] | None):
        super().__init__()
        self.tasks = list(tasks)
        self.references = dict(references) if references else None
        self.history: dict[int, dict[str, float]] = {}

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        report = dict(metrics[0])
        if "val_score" in report:
            errors = task_errors(report, self.tasks)
            self.history[int(report["epoch"])] = errors
        else:
            nan = dict.fromkeys((t.name for t in self.tasks), math.nan)
            errors = self.history.get(int(report.get("best_epoch", -1)), nan)
            for task in nan:
                seen = [e[task] for e in self.history.values() if math.isfinite(e[task])]
                report[f"min_val_error/{task}"] = min(seen, default=math.nan)
        report.update({f"val_error/{task}": value for task, value in errors.items()})
        if self.references:
            report["objective"] = objective(errors, self.references)
        super().after_report(run_context, [report, *metrics[1:]], checkpoint)


def _trial(
    point: dict[str, Any],
    *,
    shards: str,
    space: TuneSpace,
    references: dict[str, float] | None,
    parent_run_id: str,
    tune_name: str,
    env: dict[str, str],
) -> None:
    """One Tune trial: a full ``mtc`` training run (its own MLflow child run) of the sampled point."""
    from mtc.train.trainer import train

    os.environ.update(env)
    run_name = f"{tune_name}-{tune.get_context().get_trial_id()}"
    if "reference" in point:
        config = reference_config(space, point["reference"], run_name)
    else:
        config = trial_config(space, point, run_name)
    callback = ObjectiveCallback(config.tasks, references)
    train(Path(shards), config, register=None, parent_run_id=parent_run_id, ray_callbacks=[callback])


class _Progress(tune.Callback):
    """One line per trial as it ends (``echo`` must pickle by reference: Tune saves its callbacks)."""

    def __init__(self, echo: Echo, what: str, total: int, space: TuneSpace):
        self.echo, self.what, self.total, self.space, self.done = echo, what, total, space, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        result = trial.last_result or {}
        ending = "done" if "best_epoch" in result else f"stopped early after epoch {int(result.get('epoch', 0))}"
        score = f"objective {result['objective']:.4f}, " if "objective" in result else ""
        self.echo(
            f"  {self.what} {self.done}/{self.total} {trial.trial_id} {self._point(trial.config)}: {score}{ending}"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.echo(f"  {self.what} {self.done}/{self.total} {trial.trial_id} failed; see {trial.error_file or ''}")

    def get_state(self) -> dict[str, int]:
        return {"done": self.done}  # saved with the experiment, so a resumed tune counts on

    def set_state(self, state: dict[str, int]) -> None:
        self.done = state["done"]

    def _point(self, point: Mapping[str, Any]) -> str:
        if "reference" in point:
            return f"{point['reference']} alone"
        return " | ".join(f"{k} {v}" for k, v in describe(trial_config(self.space, point)).items())


class _ReleaseStoppedRuns(tune.Callback):
    """Frees the workers' placement group of each Train run that died with an early-stopped trial.

    Ray Train's own cleaner queries the dashboard's state API, which an embedded Ray without a dashboard
    lacks; Ray would then keep the dead run's CPUs reserved until the driver exits, and the next trial's
    Ray Data pipeline would wait for them forever. After a trial ends, this looks every few seconds for a
    minute (the trial's actor, and with it the Train controller, dies a little after Tune stops it).
    """

    def __init__(self, every_s: float = 2.0, for_s: float = 60.0):
        self.every_s, self.for_s, self.last, self.until = every_s, for_s, 0.0, 0.0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.until = time.monotonic() + self.for_s

    on_trial_error = on_trial_complete

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now < self.until and now - self.last >= self.every_s:
            self.last = now
            release_orphan_placement_groups()


def release_orphan_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; returns how many were removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:  # the GCS table is the only place that names a placement group's creator without the dashboard
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        table = [
            gcs_pb2.PlacementGroupTableData.FromString(raw)
            for raw in state._connect_and_get_accessor().get_placement_group_table()
        ]
    except Exception:  # a Ray client connection or another Ray version: Ray Train's own cleaner has to do
        return 0
    job, removed = ray.get_runtime_context().get_job_id(), 0
    for pg in table:
        by_actor = pg.creator_actor_id != b"\xff" * len(pg.creator_actor_id)
        if (
            by_actor
            and pg.creator_actor_dead
            and not pg.is_detached
            and pg.creator_job_id.hex() == job
            and pg.state != gcs_pb2.PlacementGroupTableData.REMOVED
        ):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


def start_tune(
    shards: Path,
    space: TuneSpace,
    *,
    name: str | None = None,
    trials: int | None = None,
    max_concurrent: int = 1,
    workers_per_trial: int | None = None,
    gpus_per_trial: int | None = None,
    echo: Echo = print,
) -> TuneOutcome:
    """A new tune of ``space`` on the graph shards: checks, parent run, references, trials, report."""
    import mlflow
    import ray

    space = _with_flags(space, trials, workers_per_trial, gpus_per_trial)
    base = space.base_config()
    concurrency = plan_concurrency(max_concurrent, base.scaling, ray.cluster_resources())
    if concurrency < max_concurrent:
        echo(f"running {concurrency} trial(s) at a time: the Ray cluster holds no more (asked {max_concurrent})")
    shards = Path(shards).resolve()
    prepare_splits(shards, base)
    name = _checked_name(name or time.strftime("tune-%Y%m%d-%H%M%S"))
    uri = tracking.configure()
    if _find_parent(name) is not None or tune.Tuner.can_restore(_experiment_path(name)):
        raise MtcError(f"a tune named {name!r} exists; continue it with --resume {name}, or pick another --name")
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(
        tracking.experiment_id(base.experiment),
        run_name=name,
        tags={NAME_TAG: name, KIND_TAG: "parent", "mtc.shards": str(shards)},
    )
    run_id = parent.info.run_id
    for key, value in {
        "trials": space.trials,
        "search": space.algorithm(),
        "max_concurrent": concurrency,
        "workers_per_trial": base.scaling.workers,
        "gpus_per_trial": base.scaling.gpus,
        "tasks": ",".join(space.task_names()),
        "groupings": len(space.partitions()),
        "epochs": base.epochs,
    }.items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, dump_space(space), "tune/space.yaml")
    echo(
        f"tune {name}: {space.trials} trials of {', '.join(space.task_names())}, {concurrency} at a time "
        f"({space.algorithm()} search); MLflow parent run {run_id}; continue it with mtc tune --resume {name}"
    )
    return _drive(client, run_id, name, shards, space, concurrency, echo)


def resume_tune(name: str, *, shards: Path | None = None, echo: Echo = print) -> TuneOutcome:
    """Continue tune ``name``: finished trials are kept, unfinished and failed ones run again."""
    import mlflow
    import ray

    uri = tracking.configure()
    parent = _find_parent(_checked_name(name))
    if parent is None:
        raise MtcError(f"no tune named {name!r} in {uri}; start one with mtc tune --data ... --space ...")
    client = mlflow.MlflowClient(uri)
    run_id = parent.info.run_id
    space = parse_space(
        yaml.safe_load(mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/tune/space.yaml")), source=f"tune {name}"
    )
    shards = Path(shards or parent.data.tags["mtc.shards"]).resolve()
    plan_concurrency(1, space.base_config().scaling, ray.cluster_resources())
    prepare_splits(shards, space.base_config())
    concurrency = int(parent.data.params.get("max_concurrent", 1))
    client.update_run(run_id, status="RUNNING")
    echo(f"resuming tune {name} (MLflow parent run {run_id}): finished trials are kept")
    return _drive(client, run_id, name, shards, space, concurrency, echo)


def _checked_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise MtcError(f"tune name {name!r}: use letters, digits, '-', '_' and '.' (it names folders and runs)")
    return name


def _with_flags(space: TuneSpace, trials: int | None, workers: int | None, gpus: int | None) -> TuneSpace:
    scaling = {k: v for k, v in {"workers": workers, "gpus": gpus}.items() if v is not None}
    train = {**space.train, "scaling": {**space.train.get("scaling", {}), **scaling}}
    data = {**space.model_dump(mode="json"), "train": train, **({"trials": trials} if trials else {})}
    return parse_space(data, source="the command line")


def _drive(client, run_id: str, name: str, shards: Path, space: TuneSpace, concurrency: int, echo: Echo) -> TuneOutcome:
    """References, then trials, then child-run bookkeeping and the report; the parent run ends FINISHED."""
    try:
        references = _references(client, run_id, name, shards, space, concurrency, echo)
        grid = _fit_trials(run_id, name, shards, space, references, concurrency, echo)
        records = _finish_child_runs(client, run_id, name, space, grid, references)
        report = build_report(records, name, list(space.space.choices))
        log_report(client, run_id, report)
    except TuneInterrupted:
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return TuneOutcome(name, run_id, references, records, report)


def _references(
    client, run_id: str, name: str, shards: Path, space: TuneSpace, concurrency: int, echo: Echo
) -> dict[str, float]:
    """Each task's single-task validation error: given in the space, or from a reference run with the same budget."""
    references = dict(space.references)
    missing = [t for t in space.task_names() if t not in references]
    if missing:
        echo(f"single-task references: {', '.join(missing)} ({space.base_config().epochs} epochs each)")
        grid = _fit(
            name + "-references",
            _trainable(shards, space, None, run_id, name),
            lambda trainable: tune.Tuner(
                trainable,
                param_space={"reference": tune.grid_search(missing)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=concurrency, reuse_actors=False, trial_dirname_creator=_trial_dirname
                ),
                run_config=_run_config(name + "-references", _Progress(echo, "reference", len(missing), space)),
            ),
            len(missing),
        )
        children = _child_runs(client, run_id)
        for result in grid:
            task = result.config["reference"]
            if result.error is not None:
                raise TrainingError(f"the single-task reference run of {task} failed: {result.error}")
            references[task] = float(result.metrics[f"min_val_error/{task}"])
            child = children.get(f"{name}-{Path(result.path).name}")
            if child is not None:
                client.set_tag(child.info.run_id, "mtc.tune.reference", task)
    for task, value in references.items():
        client.log_metric(run_id, f"reference/{task}", value)
    echo(
        "references (validation MAE; 1 - AUC for binary tasks): "
        + ", ".join(f"{t} {v:.4g}" for t, v in references.items())
    )
    return references


def _fit_trials(
    run_id: str, name: str, shards: Path, space: TuneSpace, references: dict[str, float], concurrency: int, echo: Echo
):
    dims = param_space(space)
    echo(f"trials: {space.trials}, varying {', '.join(dims) or 'nothing'}")
    return _fit(
        name,
        _trainable(shards, space, references, run_id, name),
        lambda trainable: tune.Tuner(
            trainable,
            param_space=dims,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="min",
                num_samples=space.trials,
                max_concurrent_trials=concurrency,
                search_alg=_search_alg(space, dims),
                scheduler=_scheduler(space),
                reuse_actors=False,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=_run_config(name, _Progress(echo, "trial", space.trials, space)),
        ),
        space.trials,
    )


def _trainable(shards: Path, space: TuneSpace, references: dict[str, float] | None, run_id: str, name: str):
    env = {
        "MTC_HOME": str(tracking.mtc_home()),
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "MTC_STORAGE": tracking.checkpoint_root(),
    }
    fn = tune.with_parameters(
        _trial, shards=str(shards), space=space, references=references, parent_run_id=run_id, tune_name=name, env=env
    )
    return tune.with_resources(fn, {"CPU": TRIAL_CPUS})


def _trial_dirname(trial) -> str:
    """Trial folders named by trial id alone (Tune's default packs the whole point into the name)."""
    return trial.trial_id


def _run_config(name: str, progress: _Progress) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=tracking.checkpoint_root(),
        verbose=0,
        callbacks=[progress, _ReleaseStoppedRuns()],
        failure_config=tune.FailureConfig(max_failures=0),
    )


def _search_alg(space: TuneSpace, dims: Mapping[str, Any]):
    points = first_points(space)
    if space.algorithm() == "optuna" and dims:
        import optuna
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        startup = min(TPE_STARTUP, max(1, space.trials // 2))
        return OptunaSearch(sampler=TPESampler(seed=space.seed, n_startup_trials=startup), points_to_evaluate=points)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=space.seed, points_to_evaluate=points)


def _scheduler(space: TuneSpace):
    """ASHA on the per-epoch objective; no rung at the last epoch, so no finished run is cut before its test."""
    epochs = space.base_config().epochs
    if not space.asha.enabled or epochs < 2:
        return None
    from ray.tune.schedulers import ASHAScheduler

    last = epochs - 1
    return ASHAScheduler(
        time_attr="epoch",
        max_t=last,
        grace_period=min(space.asha.grace_period, last),
        reduction_factor=space.asha.reduction_factor,
        stop_last_trials=False,
    )


def _experiment_path(name: str) -> str:
    return f"{tracking.checkpoint_root().rstrip('/')}/{name}"


def _fit(name: str, trainable, make_tuner: Callable[[Any], tune.Tuner], n_trials: int):
    """Restore the Tune experiment ``name`` when it exists (finished trials are not rerun), else start it.

    Raises TuneInterrupted unless all ``n_trials`` ended: a finished trial's last result is the final report
    (``best_epoch``), a trial ASHA stopped is marked ``done``; one cut short by an interruption is neither.
    """
    path = _experiment_path(name)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = make_tuner(trainable)
    grid = tuner.fit()
    ended = sum(map(_ended, grid))
    if ended < n_trials:
        raise TuneInterrupted(
            f"the tune stopped with {ended} of {n_trials} trials ended; continue it with "
            f"mtc tune --resume {name.removesuffix('-references')}"
        )
    return grid


def _ended(result) -> bool:
    metrics = result.metrics or {}
    return result.error is not None or "best_epoch" in metrics or bool(metrics.get("done"))


def _find_parent(name: str):
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(experiments, f"tags.`{NAME_TAG}` = '{name}' and tags.`{KIND_TAG}` = 'parent'", max_results=1)
        if experiments
        else []
    )
    return runs[0] if runs else None


def _finish_child_runs(
    client, run_id: str, name: str, space: TuneSpace, grid, references: Mapping[str, float]
) -> list[TrialRecord]:
    """Trial records from Tune's results; each child run gets the point as tags, the objective, a final status."""
    newest = _child_runs(client, run_id)
    records = []
    for result in grid:
        trial_id = Path(result.path).name
        child = newest.get(f"{name}-{trial_id}")
        record = _record(space, result, trial_id, references, child.info.run_id if child else None)
        records.append(record)
        if child is not None:
            _tag_child(client, child, record)
    return records


def _child_runs(client, run_id: str) -> dict[str, Any]:
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
    status = ERROR if result.error is not None else FINISHED if "best_epoch" in metrics else STOPPED
    errors = {t: float(metrics.get(f"val_error/{t}", math.nan)) for t in space.task_names()}
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
