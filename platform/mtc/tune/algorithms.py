"""How a tune picks and stops trials: the search algorithm (Optuna TPE or random) and the ASHA scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtc.tune.search import TPE_STARTUP, TuneSpace, first_points


def search_algorithm(space: TuneSpace, dims: Mapping[str, Any], concurrency: int):
    """Optuna TPE or random search, ``concurrency`` trials at a time (each limits itself: Tune's
    ``max_concurrent_trials`` reaches only a bare ``Searcher``); the space's first points (``first_points``) come
    first."""
    points = first_points(space)
    if space.algorithm() == "optuna" and dims:
        import optuna
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        startup = min(TPE_STARTUP, max(1, space.trials // 2))
        from ray.tune.search import ConcurrencyLimiter

        sampler = TPESampler(seed=space.seed, n_startup_trials=startup)
        return ConcurrencyLimiter(OptunaSearch(sampler=sampler, points_to_evaluate=points), max_concurrent=concurrency)
    return replay(points, concurrency, random_state=space.seed)


def replay(points: list[dict[str, Any]], concurrency: int, **kwargs):
    """Tune's generator of ``points`` first (then random ones), ``concurrency`` at a time."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency, **kwargs)


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
