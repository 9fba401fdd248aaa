"""The tune driver: resource plan, parent MLflow run, single-task references, the Tuner, the report.

Each trial is a function that builds a TorchTrainer (``mtc.train.trainer.train``) and forwards every epoch's
report to Tune through ``ObjectiveCallback``, which adds the objective (mean validation error over tasks,
each divided by the task's single-task reference) so ASHA stops weak trials on it epoch by epoch.

With a time budget no trial starts after it (the single-task references always run: every objective needs them);
``--resume`` runs the trials left, the points the search chose for them, as a new round (``mtc.tune.fitting``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ray import tune

from mtc import tracking
from mtc.config import dump_yaml
from mtc.train.datasets import prepare_splits
from mtc.train.trainer import TrainingError
from mtc.tune.algorithms import replay, scheduler, search_algorithm
from mtc.tune.callbacks import Echo, ReleaseStoppedRuns, TrialEcho, tune_trial_line
from mtc.tune.child_runs import child_runs, finish_child_runs, new_parent, reopen
from mtc.tune.distinct import point_key
from mtc.tune.fitting import TuneInterrupted, checked_name, deadline_of, fit, restored_rounds, round_name, run_config
from mtc.tune.report import NOT_STARTED, TrialRecord, TuneReport, build_report, log_report
from mtc.tune.search import TuneSpace, distinct_trials, param_space, parse_space, point_config
from mtc.tune.trial import plan_concurrency, trainable, trial_dirname

SPACE_PATH = "tune/space.yaml"  # the parent run's copy of the space, read back by --resume
STATE_TAG = "mtc.tune.state"  # complete, or budget spent (--resume runs the rest)


@dataclass
class TuneOutcome:
    name: str
    parent_run_id: str
    references: dict[str, float]
    trials: list[TrialRecord]
    report: TuneReport
    not_started: int  # trials the time budget left for a resume


def start_tune(
    shards: Path,
    space: TuneSpace,
    *,
    name: str | None = None,
    trials: int | None = None,
    max_concurrent: int = 1,
    workers_per_trial: int | None = None,
    gpus_per_trial: int | None = None,
    budget_minutes: float | None = None,
    echo: Echo = print,
) -> TuneOutcome:
    """A new tune of ``space`` on the graph shards: checks, parent run, references, trials, report."""
    import mlflow
    import ray

    space = _with_flags(space, trials, workers_per_trial, gpus_per_trial)
    if (distinct := distinct_trials(space)) < space.trials:
        echo(
            f"the space holds {distinct} distinct point(s): {distinct} trial(s), not {space.trials} "
            "(a repeated point would train the same model again)"
        )
        space = space.model_copy(update={"trials": distinct})
    base = space.base_config()
    concurrency = plan_concurrency(max_concurrent, base.scaling, ray.cluster_resources(), echo, base.compile)
    shards = Path(shards).resolve()
    prepare_splits(shards, base)
    name = checked_name(name or time.strftime("tune-%Y%m%d-%H%M%S"))
    client = mlflow.MlflowClient(tracking.configure())
    params = {
        "trials": space.trials,
        "search": space.algorithm(),
        "max_concurrent": concurrency,
        "workers_per_trial": base.scaling.workers,
        "gpus_per_trial": base.scaling.gpus,
        "tasks": ",".join(space.task_names()),
        "groupings": len(space.partitions()),
        "epochs": base.epochs,
    }
    run_id = new_parent(client, "tune", name, base.experiment, shards, params, (SPACE_PATH, dump_yaml(space)))
    echo(
        f"tune {name}: {space.trials} trials of {', '.join(space.task_names())}, {concurrency} at a time "
        f"({space.algorithm()} search); MLflow parent run {run_id}; continue it with mtc tune --resume {name}"
    )
    return _drive(client, run_id, name, shards, space, concurrency, deadline_of(budget_minutes), echo)


def resume_tune(
    name: str, *, shards: Path | None = None, budget_minutes: float | None = None, echo: Echo = print
) -> TuneOutcome:
    """Continue tune ``name``: finished trials are kept; unfinished, failed and unstarted ones run."""
    run = reopen("tune", name, SPACE_PATH, "mtc tune --data ... --space ...", parse_space, _check_data, shards)
    echo(f"resuming tune {name} (MLflow parent run {run.run_id}): finished trials are kept")
    deadline = deadline_of(budget_minutes)
    return _drive(run.client, run.run_id, name, run.shards, run.spec, run.concurrency, deadline, echo)


def _check_data(shards: Path, space: TuneSpace) -> None:
    prepare_splits(shards, space.base_config())


def _with_flags(space: TuneSpace, trials: int | None, workers: int | None, gpus: int | None) -> TuneSpace:
    scaling = {k: v for k, v in {"workers": workers, "gpus": gpus}.items() if v is not None}
    train = {**space.train, "scaling": {**space.train.get("scaling", {}), **scaling}}
    data = {**space.model_dump(mode="json"), "train": train, **({"trials": trials} if trials else {})}
    return parse_space(data, source="the command line")


def _drive(
    client,
    run_id: str,
    name: str,
    shards: Path,
    space: TuneSpace,
    concurrency: int,
    deadline: float | None,
    echo: Echo,
) -> TuneOutcome:
    """References, then trials, then child-run bookkeeping and the report; the parent run ends FINISHED, or KILLED
    when the budget left trials unstarted."""
    try:
        references = _references(client, run_id, name, shards, space, concurrency, echo)
        grid = _fit_trials(run_id, name, shards, space, references, concurrency, deadline, echo)
        records = finish_child_runs(client, run_id, name, space, grid, references)
        report = build_report(records, name, list(space.space.choices))
        log_report(client, run_id, report)
    except TuneInterrupted:
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    not_started = sum(r.status == NOT_STARTED for r in records)
    client.set_tag(run_id, STATE_TAG, "budget spent" if not_started else "complete")
    client.set_terminated(run_id, status="KILLED" if not_started else "FINISHED")
    return TuneOutcome(name, run_id, references, records, report, not_started)


def _references(
    client, run_id: str, name: str, shards: Path, space: TuneSpace, concurrency: int, echo: Echo
) -> dict[str, float]:
    """Each task's single-task validation error: given in the space, or from a reference run with the same budget."""
    references = dict(space.references)
    missing = [t for t in space.scored_task_names() if t not in references]
    if missing:
        echo(f"single-task references: {', '.join(missing)} ({space.base_config().epochs} epochs each)")
        grid = fit(
            name + "-references",
            _trainable(shards, space, None, run_id, name),
            lambda trainable: tune.Tuner(
                trainable,
                param_space={"reference": tune.grid_search(missing)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=concurrency, reuse_actors=False, trial_dirname_creator=trial_dirname
                ),
                run_config=_run_config(name + "-references", echo, "reference", len(missing), space),
            ),
            len(missing),
            f"mtc tune --resume {name}",
        )
        children = child_runs(client, run_id)
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
    run_id: str,
    name: str,
    shards: Path,
    space: TuneSpace,
    references: dict[str, float],
    concurrency: int,
    deadline: float | None,
    echo: Echo,
) -> list:
    """The results the report shows, one per trial of the search, latest attempt last.

    Round 0 is the search. A resume restores the rounds so far and runs, as one new round, the points of the trials
    none finished (unstarted for the budget, or failed), ``concurrency`` at a time, ASHA among themselves.
    """
    dims = param_space(space)
    fn = _trainable(shards, space, references, run_id, name, deadline)
    resume = f"mtc tune --resume {name}"

    def run_round(k: int, search, n: int) -> list:
        path = round_name(name, k)
        return fit(path, fn, _tuner(path, space, dims, search, n, echo), n, resume)

    rounds = restored_rounds(name, fn, resume)
    if not rounds:
        echo(f"trials: {space.trials}, varying {', '.join(dims) or 'nothing'}")
        rounds = [run_round(0, search_algorithm(space, dims, concurrency), space.trials)]
    else:
        missing = settle_rounds(rounds)[1]
        if missing and (deadline is None or time.time() < deadline):
            echo(f"round {len(rounds) + 1}: {len(missing)} trial(s) not finished so far")
            rounds.append(run_round(len(rounds), replay(missing, concurrency), len(missing)))
    return settle_rounds(rounds)[0]


def settle_rounds(rounds: list[list]) -> tuple[list, list[dict]]:
    """(the results that stand for the search's trials, the points still to run).

    Each of round 0's trials is a slot of its point; later rounds only rerun points, so a point keeps as many
    slots as round 0 gave it, filled by its trials that ended (finished or stopped by ASHA), else by its latest
    failed or unstarted attempts, whose points are the ones to run again.
    """

    slots = Counter(point_key(r.config) for r in rounds[0] if r.config is not None)
    attempts: dict[str, list] = {}
    for result in (r for round_results in rounds for r in round_results if r.config is not None):
        attempts.setdefault(point_key(result.config), []).append(result)
    shown, missing = [], []
    for point, n in slots.items():
        ended = [r for r in attempts[point] if r.error is None][:n]
        failed = [r for r in attempts[point] if r.error is not None][len(ended) - n :] if len(ended) < n else []
        shown += ended + failed
        missing += [dict(r.config) for r in failed]
    return shown, missing


def _tuner(name: str, space: TuneSpace, dims, search, n: int, echo: Echo):
    """``make_tuner`` of ``fit`` for a round ``name`` of ``n`` trials picked by ``search`` (which keeps to the
    concurrency itself) and cut by ASHA."""

    def make(trainable) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space=dims,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="min",
                num_samples=n,
                search_alg=search,
                scheduler=scheduler(space),
                reuse_actors=False,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=_run_config(name, echo, "trial", n, space),
        )

    return make


def _trainable(
    shards: Path,
    space: TuneSpace,
    references: dict[str, float] | None,
    run_id: str,
    name: str,
    deadline: float | None = None,
):
    return trainable(shards, partial(point_config, space), references, run_id, name, deadline)


def _run_config(name: str, echo: Echo, what: str, total: int, space: TuneSpace) -> tune.RunConfig:
    progress = TrialEcho(echo, what, total, partial(tune_trial_line, space))
    return run_config(name, [progress, ReleaseStoppedRuns()])
