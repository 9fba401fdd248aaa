"""A tune never runs one point twice: the search's proposals, redrawn or drawn from the grid; no Ray runs."""

from __future__ import annotations

import pytest

from mtc.tune.algorithms import search_algorithm
from mtc.tune.distinct import point_key
from mtc.tune.search import (
    distinct_trials,
    first_points,
    grid,
    load_space,
    param_space,
    parse_space,
    trial_config,
)

FE = "formation_energy_per_atom"


@pytest.fixture(scope="module")
def methods():
    """The shipped methods search: 2 strategies x 3 auxiliary sets x 3 shared depths x 2 gradient surgeries."""
    return load_space("configs/tune/methods.yaml")


def objective_of(point: dict) -> float:
    """A landscape with one clear best point (DWA, one shared convolution, PCGrad, both auxiliaries), which a
    model-based search settles on and keeps proposing."""
    return (
        1.0
        + 0.05 * (point["strategy"] != "dwa")
        + 0.02 * abs(point["model.shared_convs"] - 1)
        + 0.03 * (point["loss.gradient_surgery"] != "pcgrad")
        - 0.01 * point["auxiliary"].count("+")
    )


def start(space, concurrency: int = 1):
    search = search_algorithm(space, param_space(space), concurrency)
    search.set_search_properties("objective", "min", param_space(space))
    return search


def run_trials(search, n: int, first: int = 0) -> list[dict]:
    """Ask for ``n`` points one at a time, each finished with its objective before the next."""
    points = []
    for k in range(first, first + n):
        point = search.suggest(f"t{k}")
        assert isinstance(point, dict), f"trial {k}: {point!r}"
        search.on_trial_result(f"t{k}", {"objective": objective_of(point), "training_iteration": 1})
        search.on_trial_complete(f"t{k}", {"objective": objective_of(point)})
        points.append(point)
    return points


def test_the_methods_space_is_a_grid_of_36_valid_points(methods):
    points = grid(methods)
    assert len(points) == 36 and len({point_key(p) for p in points}) == 36
    assert all(set(p) == set(param_space(methods)) for p in points)
    configs = {trial_config(methods, p).model_dump_json() for p in points}
    assert len(configs) == 36  # distinct points are distinct trainings
    assert distinct_trials(methods) == methods.trials == 24


def test_a_space_with_a_range_has_no_grid_and_keeps_its_trials():
    tiny = load_space("configs/tune/tiny.yaml")  # loss weights and lr are ranges
    assert grid(tiny) is None and distinct_trials(tiny) == tiny.trials


def test_a_small_grid_caps_the_trials(methods):
    small = parse_space({**methods.model_dump(), "space": {**methods.space.model_dump(), "strategy": ["dwa"]}})
    small = parse_space({**small.model_dump(), "space": {**small.space.model_dump(), "auxiliary": None}})
    assert len(grid(small)) == 6 and distinct_trials(small) == 6  # 3 depths x 2 surgeries, 24 asked
    nothing = parse_space({**small.model_dump(), "space": {"strategy": ["dwa"], "groupings": "joint"}})
    assert grid(nothing) == [{}] and distinct_trials(nothing) == 1


@pytest.mark.parametrize("search", ["optuna", "random"])
def test_every_point_of_the_grid_runs_once_then_the_search_is_finished(methods, search):
    space = parse_space({**methods.model_dump(), "search": search, "trials": 36})
    algorithm = start(space)
    points = run_trials(algorithm, 36)
    assert len({point_key(p) for p in points}) == 36
    assert algorithm.suggest("t36") == "FINISHED"
    first = [point_key(p) for p in points[:3]]  # the centre with each auxiliary set, as the space asks
    assert first == [point_key(p) for p in first_points(space)]


def test_tpe_settles_and_still_never_repeats(methods):
    algorithm = start(methods)
    points = run_trials(algorithm, methods.trials)
    assert len({point_key(p) for p in points}) == methods.trials
    assert algorithm.searcher.redraws > 0  # TPE did propose points already run: drawn again, not run twice


def test_a_restored_search_remembers_what_it_handed_out(methods, tmp_path):
    """Saved and restored the way Tune does it for a restored tune: the wrappers' state, the base searcher's file."""
    from ray.tune.search import SearchGenerator

    before = start(methods)
    points = run_trials(before, 12)
    SearchGenerator(before).save_to_dir(str(tmp_path), session_str="s")
    after = start(methods)
    SearchGenerator(after).restore_from_dir(str(tmp_path))
    points += run_trials(after, methods.trials - 12, first=12)
    assert len({point_key(p) for p in points}) == methods.trials


def test_concurrent_trials_get_distinct_points(methods):
    algorithm = start(methods, concurrency=3)
    pending = {f"t{k}": algorithm.suggest(f"t{k}") for k in range(3)}
    assert algorithm.suggest("t3") is None  # the limit holds
    seen = [point_key(p) for p in pending.values()]
    for k in range(3, methods.trials):
        done = next(iter(pending))
        algorithm.on_trial_complete(done, {"objective": objective_of(pending.pop(done))})
        pending[f"t{k}"] = algorithm.suggest(f"t{k}")
        seen.append(point_key(pending[f"t{k}"]))
    assert len(set(seen)) == methods.trials
