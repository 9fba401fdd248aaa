"""One Tune trial: what it reserves and what it runs (a full ``mtc`` training run, an MLflow child run)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from mtc import tracking
from mtc.config import ScalingConfig, TrainConfig
from mtc.train.resources import WorkerPlan, check_compiler, check_resources
from mtc.tune.callbacks import ObjectiveCallback
from mtc.tune.fitting import BudgetSpent

TRIAL_CPUS = 0.01  # the trial function only drives; its Train workers reserve their own CPUs ({"CPU": 0} fails)

MakeConfig = Callable[[Mapping[str, Any], str], TrainConfig]  # (Tune point, run name) -> the trial's config


def plan_concurrency(
    requested: int,
    scaling: ScalingConfig,
    cluster: Mapping[str, float],
    echo: Callable[[str], None] | None = None,
    compile_convs: bool = False,
) -> int:
    """Trials that run at once: at most ``requested`` and what the cluster holds; ResourceError if not even one.

    A trial needs its workers' CPUs (and GPUs), 1 CPU left for its Ray Data pipeline and a sliver for itself, and
    with ``compile_convs`` (the base config's ``compile``) a C++ compiler for CPU workers. ``echo`` is told when the
    cluster holds fewer than asked.
    """
    plan = WorkerPlan.of(scaling)
    holds = check_resources(plan, cluster, TRIAL_CPUS, "--gpus-per-trial", "--workers-per-trial")
    check_compiler(compile_convs, plan)
    concurrency = max(1, min(requested, holds))
    if echo and concurrency < requested:
        echo(f"running {concurrency} trial(s) at a time: the Ray cluster holds no more (asked {requested})")
    return concurrency


def run_trial(
    point: dict[str, Any],
    *,
    shards: str,
    make_config: MakeConfig,
    references: dict[str, float] | None,
    parent_run_id: str,
    tune_name: str,
    env: dict[str, str],
    deadline: float | None = None,
) -> None:
    """One Tune trial: a full ``mtc`` training run (its own MLflow child run) of the point.

    A trial that starts after ``deadline`` (epoch seconds) raises BudgetSpent instead: Tune records it as
    errored, and a restore with ``restart_errored`` runs it, so nothing launched late is lost for good.
    """
    from mtc.train.trainer import train

    if deadline is not None and time.time() > deadline:
        raise BudgetSpent("the time budget was spent before this trial started")
    os.environ.update(env)
    config = make_config(point, f"{tune_name}-{tune.get_context().get_trial_id()}")
    callback = ObjectiveCallback(config.tasks, references)
    train(Path(shards), config, parent_run_id=parent_run_id, ray_callbacks=[callback])


def trainable(
    shards: Path,
    make_config: MakeConfig,
    references: dict[str, float] | None,
    run_id: str,
    name: str,
    deadline: float | None = None,
):
    """The Tune trainable of ``run_trial`` (``make_config`` must pickle: a module-level function or a partial)."""
    env = {
        "MTC_HOME": str(tracking.mtc_home()),
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "MTC_STORAGE": tracking.checkpoint_root(),
    }
    fn = tune.with_parameters(
        run_trial,
        shards=str(shards),
        make_config=make_config,
        references=references,
        parent_run_id=run_id,
        tune_name=name,
        env=env,
        deadline=deadline,
    )
    return tune.with_resources(fn, {"CPU": TRIAL_CPUS})


def trial_dirname(trial) -> str:
    """Trial folders named by trial id alone (Tune's default packs the whole point into the name)."""
    return trial.trial_id
