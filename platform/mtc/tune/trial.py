"""One tune trial: what it reserves and what it runs (a full ``mtc`` training run, an MLflow child run)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from mtc import tracking
from mtc.config import ScalingConfig
from mtc.train.resources import WorkerPlan, check_resources
from mtc.tune.callbacks import ObjectiveCallback
from mtc.tune.search import TuneSpace, reference_config, trial_config

TRIAL_CPUS = 0.01  # the trial function only drives; its Train workers reserve their own CPUs ({"CPU": 0} fails)


def plan_concurrency(requested: int, scaling: ScalingConfig, cluster: Mapping[str, float]) -> int:
    """Trials that run at once: at most ``requested`` and what the cluster holds; ResourceError if not even one.

    A trial needs its workers' CPUs (and GPUs), 1 CPU left for its Ray Data pipeline and a sliver for itself.
    """
    plan = WorkerPlan.of(scaling)
    holds = check_resources(plan, cluster, TRIAL_CPUS, "--gpus-per-trial", "--workers-per-trial")
    return max(1, min(requested, holds))


def run_trial(
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
    train(Path(shards), config, parent_run_id=parent_run_id, ray_callbacks=[callback])


def trainable(shards: Path, space: TuneSpace, references: dict[str, float] | None, run_id: str, name: str):
    env = {
        "MTC_HOME": str(tracking.mtc_home()),
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        "MTC_STORAGE": tracking.checkpoint_root(),
    }
    fn = tune.with_parameters(
        run_trial, shards=str(shards), space=space, references=references, parent_run_id=run_id, tune_name=name, env=env
    )
    return tune.with_resources(fn, {"CPU": TRIAL_CPUS})


def trial_dirname(trial) -> str:
    """Trial folders named by trial id alone (Tune's default packs the whole point into the name)."""
    return trial.trial_id
