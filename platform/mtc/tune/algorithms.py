"""How a tune picks and stops trials: the search algorithm (Optuna TPE or random) and the ASHA scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtc.tune.distinct import DistinctPoints
from mtc.tune.search import TPE_STARTUP, TuneSpace, first_points, grid


def search_algorithm(space: TuneSpace, dims: Mapping[str, Any], concurrency: int):
    """Optuna TPE or random search, ``concurrency`` trials at a time (each limits itself: Tune's
    ``max_concurrent_trials`` reaches only a bare ``Searcher``), never the same point twice (``DistinctPoints``);
    the space's first points (``first_points``) come first."""
    points = first_points(space)
    if not dims:
        return replay(points, concurrency)
    import optuna
    from optuna.samplers import RandomSampler, TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if space.algorithm() == "optuna":
        sampler = TPESampler(seed=space.seed, n_startup_trials=min(TPE_STARTUP, max(1, space.trials // 2)))
    else:
        sampler = RandomSampler(seed=space.seed)
    searcher = DistinctPoints(OptunaSearch(sampler=sampler, points_to_evaluate=points), grid(space), space.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def replay(points: list[dict[str, Any]], concurrency: int):
    """Tune's generator of exactly ``points``, ``concurrency`` at a time."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency)


def scheduler(space: TuneSpace):
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
