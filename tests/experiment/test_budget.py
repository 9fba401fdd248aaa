"""The time budget: a trial that would start after it declines to train, recognisably, so a resume runs it."""

from __future__ import annotations

import time

import pytest
from ray.exceptions import RayTaskError

from mtc.tune.callbacks import budget_spent
from mtc.tune.fitting import BudgetSpent
from mtc.tune.trial import run_trial


def never(point, run_name):
    raise AssertionError("a trial past the deadline must not build its config")


def trial(deadline):
    run_trial(
        {}, shards="-", make_config=never, references=None, parent_run_id="-", tune_name="-", env={}, deadline=deadline
    )


@pytest.mark.filterwarnings("ignore:`get_trial_id` is meant")  # outside Tune on purpose
def test_a_trial_after_the_deadline_declines_before_any_work():
    with pytest.raises(BudgetSpent):
        trial(time.time() - 1)
    with pytest.raises(AssertionError, match="must not build"):  # before the deadline it goes on to train
        trial(time.time() + 60)


def test_budget_errors_are_told_from_failures_also_as_ray_wraps_them():
    wrapped = RayTaskError("run_trial", "Traceback ...", BudgetSpent("spent")).as_instanceof_cause()
    assert budget_spent(BudgetSpent("spent")) and budget_spent(wrapped)
    failure = RayTaskError("run_trial", "Traceback ...", RuntimeError("out of memory")).as_instanceof_cause()
    assert not budget_spent(failure) and not budget_spent(None)
