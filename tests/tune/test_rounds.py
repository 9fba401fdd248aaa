"""A resumed tune reruns, as a new round, exactly the trials no round finished: one slot per trial of the search."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from mtc.tune.driver import settle_rounds
from mtc.tune.fitting import BudgetSpent
from mtc_cli.common import quiet_budget_errors


def result(point: dict | None, error: Exception | None = None, trial: str = "") -> SimpleNamespace:
    return SimpleNamespace(config=point, error=error, trial=trial)


A, B = {"lr": 0.01, "strategy": "fixed"}, {"lr": 0.003, "strategy": "uncertainty"}


def test_the_points_left_are_those_of_unstarted_and_failed_trials_once_per_trial():
    first = [result(A, trial="a"), result(B, BudgetSpent("spent"), "b1"), result(B, RuntimeError("oom"), "b2")]
    shown, missing = settle_rounds([first])
    assert [r.trial for r in shown] == ["a", "b1", "b2"] and missing == [B, B]  # the search drew B twice


def test_a_later_round_fills_the_slots_and_its_failures_stand_for_what_is_left():
    first = [result(A, trial="a"), result(B, BudgetSpent("spent"), "b1"), result(B, BudgetSpent("spent"), "b2")]
    second = [result(B, trial="b3"), result(B, RuntimeError("oom"), "b4")]
    shown, missing = settle_rounds([first, second])
    assert [r.trial for r in shown] == ["a", "b3", "b4"] and missing == [B]
    third = [result(B, trial="b5")]
    shown, missing = settle_rounds([first, second, third])
    assert [r.trial for r in shown] == ["a", "b3", "b5"] and missing == []


def test_a_trial_stopped_early_has_ended_and_one_tune_kept_no_point_for_is_left_out():
    stopped = result(A, trial="a")  # ASHA's stop: no error
    shown, missing = settle_rounds([[stopped, result(None, RuntimeError("died"), "x")]])
    assert shown == [stopped] and missing == []


def test_a_budget_drops_tunes_incomplete_trials_line_and_keeps_its_other_errors():
    tune_logger = logging.getLogger("ray.tune.tune")
    seen: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: seen.append(record.getMessage())
    tune_logger.addHandler(handler)
    try:
        quiet_budget_errors(5.0)
        quiet_budget_errors(5.0)  # a second command in the same process adds no second filter
        tune_logger.error("Trials did not complete: %s", ["run_trial_0001"])
        tune_logger.error("Trial run_trial_0002 errored")
        assert seen == ["Trial run_trial_0002 errored"]
        assert len(tune_logger.filters) == 1
    finally:
        tune_logger.removeHandler(handler)
        tune_logger.filters.clear()
