"""Running a named Ray Tune experiment that survives interruption: names, storage, restore-or-start.

Shared by ``mtc tune`` and ``mtc experiment``: both keep Tune's experiment state under the checkpoint root,
named like their MLflow parent run, so ``--resume NAME`` finds both again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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

    Raises TuneInterrupted, naming ``resume_command``, unless all ``n_trials`` (None: all the experiment holds)
    ended: a finished trial's last result is the final report (``best_epoch``), a trial ASHA stopped is marked
    ``done``, a failed one has an error; one cut short by an interruption is none of these. Restored failed
    trials run again with ``restart_errored``, all at once: Tune's limit on concurrent trials does not hold them.
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
    return grid


def _ended(result) -> bool:
    metrics = result.metrics or {}
    return result.error is not None or "best_epoch" in metrics or bool(metrics.get("done"))
