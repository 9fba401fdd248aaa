"""Running a named Ray Tune experiment that survives interruption: names, storage, restore-or-start, rounds.

Shared by ``mtc tune`` and ``mtc experiment``: both keep Tune's experiment state under the checkpoint root,
named like their MLflow parent run, so ``--resume NAME`` finds both again. A resume runs what is left (trials a
time budget left unstarted, failed ones) as a new *round*, one more Tune experiment ``NAME.k``, rather than Tune's
``restart_errored``, which would start every such trial at once and overfill the cluster.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from ray import tune

from mtc import tracking
from mtc.errors import MtcError


class TuneInterrupted(MtcError):
    """Tune stopped before every trial ended; ``--resume`` continues it."""


class BudgetSpent(MtcError):
    """A trial would start after the time budget: it declines to train (a resume with more time runs it)."""


def checked_name(name: str, what: str = "tune") -> str:
    """``name`` if it can name folders and runs; else MtcError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise MtcError(f"{what} name {name!r}: use letters, digits, '-', '_' and '.' (it names folders and runs)")
    return name


def experiment_path(name: str) -> str:
    """Where Tune keeps the state of experiment ``name``."""
    return f"{tracking.checkpoint_root().rstrip('/')}/{name}"


def run_config(name: str, callbacks: list) -> tune.RunConfig:
    """Tune's RunConfig for experiment ``name``: stored under the checkpoint root, quiet, no trial retries."""
    return tune.RunConfig(
        name=name,
        storage_path=tracking.checkpoint_root(),
        verbose=0,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=0),
    )


def fit(
    name: str,
    trainable,
    make_tuner: Callable[[Any], tune.Tuner] | None,
    n_trials: int | None,
    resume_command: str,
    restart_errored: bool = True,
):
    """Restore the Tune experiment ``name`` when it exists (finished trials are not rerun), else start it
    with ``make_tuner`` (None: restore only).

    Returns the results as a list. Raises TuneInterrupted, naming ``resume_command``, unless all ``n_trials``
    (None: all the experiment holds) ended: a finished trial's last result is the final report (``best_epoch``), a
    trial ASHA stopped is marked ``done``, a failed one has an error; one cut short by an interruption is none of
    these. Restored failed trials run again with ``restart_errored``, all at once: Tune's limit on concurrent
    trials does not hold them (a new round does: ``restored_rounds``).
    """
    path = experiment_path(name)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=restart_errored)
    else:
        tuner = make_tuner(trainable)
    grid = tuner.fit()
    ended, expected = sum(map(_ended, grid)), len(grid) if n_trials is None else n_trials
    if ended < expected:
        raise TuneInterrupted(f"Tune stopped with {ended} of {expected} trials ended; continue with {resume_command}")
    return _with_points(list(grid), path)


def _with_points(results: list, path: str) -> list:
    """Tune's results, each with its trial's point as ``config``: a restored trial that failed before its first
    report (one the budget left unstarted) keeps its point only in the experiment's state, not in its result."""
    if any(r.config is None for r in results):
        points = tune.ExperimentAnalysis(path).get_all_configs()  # trial folder name (its id) -> point
        for r in results:
            if r.config is None and PurePosixPath(r.path).name in points:
                r.metrics = {**(r.metrics or {}), "config": points[PurePosixPath(r.path).name]}
    return results


def round_name(name: str, k: int) -> str:
    """The Tune experiment of round k of ``name`` (round 0 is ``name``)."""
    return name if k == 0 else f"{name}.{k}"


def restored_rounds(name: str, trainable, resume_command: str) -> list[list]:
    """The results of each stored round of ``name``, in order: a round an interruption cut short runs on first;
    failed and unstarted trials stay as they are (a new round runs them)."""
    rounds = []
    while tune.Tuner.can_restore(experiment_path(path := round_name(name, len(rounds)))):
        rounds.append(fit(path, trainable, None, None, resume_command, restart_errored=False))
    return rounds


def deadline_of(budget_minutes: float | None) -> float | None:
    """Epoch seconds after which no trial starts (None: no budget)."""
    return time.time() + 60 * budget_minutes if budget_minutes is not None else None


def _ended(result) -> bool:
    metrics = result.metrics or {}
    return result.error is not None or "best_epoch" in metrics or bool(metrics.get("done"))
