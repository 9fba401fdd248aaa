"""Tune callbacks: the per-epoch objective forwarded to Tune, one line per ended trial, freeing stopped runs' CPUs."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import cloudpickle, tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback

from mtc.cluster import release_orphan_placement_groups
from mtc.tasks import TaskSpec, served
from mtc.train.metrics import split_metrics
from mtc.tune.fitting import BudgetSpent
from mtc.tune.report import describe
from mtc.tune.search import TuneSpace, objective, task_errors, trial_config

Echo = Callable[[str], None]


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
            errors = task_errors(split_metrics(report, "val"), self.tasks)
            self.history[int(report["epoch"])] = errors
        else:
            nan = dict.fromkeys((t.name for t in served(self.tasks)), math.nan)  # as task_errors: no auxiliaries
            errors = self.history.get(int(report.get("best_epoch", -1)), nan)
            for task in nan:
                seen = [e[task] for e in self.history.values() if math.isfinite(e[task])]
                report[f"min_val_error/{task}"] = min(seen, default=math.nan)
        report.update({f"val_error/{task}": value for task, value in errors.items()})
        if self.references:
            report["objective"] = objective(errors, self.references)
        super().after_report(run_context, [report, *metrics[1:]], checkpoint)


class TrialEcho(tune.Callback):
    """One line per trial as it ends: ``line(point, last_result)`` says what it was and how it ended.

    ``echo`` and ``line`` must pickle by reference (module-level functions or partials): Tune saves its callbacks.
    """

    def __init__(self, echo: Echo, what: str, total: int, line: Callable[[Mapping[str, Any], Mapping[str, Any]], str]):
        self.echo, self.what, self.total, self.line = echo, what, total, line

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._say(trial, self.line(trial.config, trial.last_result or {}), trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if budget_spent(_local_error(trial)):
            self._say(trial, "not started: the time budget was spent", trials)
        else:
            self._say(trial, f"failed; see {trial.error_file or ''}", trials)

    def _say(self, trial, what: str, trials) -> None:
        # Counted from the trials' states, not kept: a restored run restarts failed (and unstarted) trials.
        done = 1 + sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials if t is not trial)
        self.echo(f"  {self.what} {done}/{self.total} {trial.trial_id} {what}")


def tune_trial_line(space: TuneSpace, point: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """``grouping a+b | loss fixed 0.50/0.50 | lr 0.01: objective 0.98, done`` (or how ASHA stopped it)."""
    ending = "done" if "best_epoch" in result else f"stopped early after epoch {int(result.get('epoch', 0))}"
    score = f"objective {result['objective']:.4f}, " if "objective" in result else ""
    if "reference" in point:
        return f"{point['reference']} alone: {score}{ending}"
    described = " | ".join(f"{k} {v}" for k, v in describe(trial_config(space, point)).items())
    return f"{described}: {score}{ending}"


def _local_error(trial) -> BaseException | None:
    """The trial's pickled error from the driver's own copy (``get_pickled_error`` reads the storage copy, which
    is synced later: at ``on_trial_error`` time it is not there yet)."""
    path = trial.pickled_error_file
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return cloudpickle.load(f)


def budget_spent(error: BaseException | None) -> bool:
    """Whether a trial's error is ``BudgetSpent`` (Ray wraps it in a RayTaskError that keeps it as ``cause``)."""
    return isinstance(error, BudgetSpent) or isinstance(getattr(error, "cause", None), BudgetSpent)


class ReleaseStoppedRuns(tune.Callback):
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
