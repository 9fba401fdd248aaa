"""A searcher that never hands out a point twice.

Two trials of one point train the same model (same config, seed and split), yet a model-based sampler such as
Optuna's TPE keeps proposing the best point it has seen once its model settles: a tune of 24 trials on a 36-point
space spent its last 8 on copies of one trial. ``DistinctPoints`` wraps a searcher: a proposal already handed out
is told to the searcher as failed (TPE ignores failed trials, so its model is unchanged) and it is asked again;
after ``MAX_REDRAWS`` repeats in a row the point is drawn at random, seeded, among the grid's points not yet run,
and its result is added to the searcher as an evaluated point when it ends.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from typing import Any

from ray.tune.search import Searcher

MAX_REDRAWS = 10  # TPE's proposal is near-deterministic once it settles: a few asks show it, then draw from the grid


def point_key(point: Mapping[str, Any]) -> str:
    """A point's identity: its values by dimension name."""
    return json.dumps(dict(point), sort_keys=True, default=str)


class DistinctPoints(Searcher):
    """``searcher``'s points, each at most once; ``grid`` lists every point of an all-categorical space (None: a
    dimension is a range, where repeats do not happen), from which a point is drawn when the searcher only repeats.
    Returns ``FINISHED`` once every grid point has been handed out."""

    def __init__(self, searcher: Searcher, grid: list[dict[str, Any]] | None, seed: int = 0):
        self.searcher = searcher
        self.grid = grid
        self.rng = random.Random(seed)
        self.handed_out: dict[str, str] = {}  # point key -> the trial that runs it
        self.from_grid: dict[str, dict[str, Any]] = {}  # trial -> its point, drawn here, unknown to the searcher
        self.redraws = 0  # asks of the searcher whose point was already handed out, told to it as failed
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        accepted = self.searcher.set_search_properties(metric, mode, config, **spec)
        if accepted:
            self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return accepted

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.grid is not None and len(self.handed_out) >= len(self.grid):
            return Searcher.FINISHED
        for attempt in range(MAX_REDRAWS):
            ask_id = trial_id if attempt == 0 else f"{trial_id}-redraw{attempt}"
            point = self.searcher.suggest(ask_id)
            if point is None or point == Searcher.FINISHED:
                return point
            key = point_key(point)
            if key not in self.handed_out:
                self.handed_out[key] = trial_id
                return point
            self.searcher.on_trial_complete(ask_id, error=True)
            self.redraws += 1
        if self.grid is None:
            return Searcher.FINISHED
        point = self.rng.choice([p for p in self.grid if point_key(p) not in self.handed_out])
        self.handed_out[point_key(point)] = trial_id
        self.from_grid[trial_id] = point
        return dict(point)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.from_grid:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.from_grid:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        value = (result or {}).get(self.searcher.metric)
        if value is not None and not error:
            self.searcher.add_evaluated_point(self.from_grid[trial_id], value)

    # Tune saves a wrapper's state (get_state) beside its base searcher's file (save), as for ConcurrencyLimiter.
    def get_state(self) -> dict:
        return copy.deepcopy({key: value for key, value in self.__dict__.items() if key != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
