"""Tune spaces, groupings, simplex weights, the objective, the resource plan and the report: no Ray runs."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from mtc.config import ConfigError, ScalingConfig, TrainConfig, dump_yaml, load_config
from mtc.tasks import TaskSpec
from mtc.train.resources import ResourceError
from mtc.tune import callbacks, trial
from mtc.tune.report import FINISHED, STOPPED, TrialRecord, build_report
from mtc.tune.search import (
    bell,
    first_points,
    grouping_label,
    load_space,
    objective,
    param_space,
    parse_space,
    partitions,
    reference_config,
    relative_errors,
    simplex,
    task_errors,
    trial_config,
)

FE, BG = "formation_energy_per_atom", "band_gap"


@pytest.fixture(scope="module")
def tiny():
    return load_space("configs/tune/tiny.yaml")


def test_bell_numbers():
    assert [bell(n) for n in range(8)] == [1, 1, 2, 5, 15, 52, 203, 877]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_partitions_enumerate_every_grouping_once(n):
    items = [f"t{k}" for k in range(n)]
    found = partitions(items)
    assert len(found) == bell(n)
    assert len({frozenset(frozenset(g) for g in p) for p in found}) == bell(n)
    for groups in found:
        assert sorted(t for g in groups for t in g) == items and all(groups)
    assert found[0] == [items] and found[-1] == [[t] for t in items]  # joint first, each alone last


def test_grouping_labels_are_canonical(tiny):
    assert [grouping_label(p) for p in tiny.partitions()] == [f"{FE}+{BG}", f"{FE} | {BG}"]
    listed = parse_space({**tiny.model_dump(), "space": {"groupings": [[[BG], [FE]], [[FE], [BG]], [[BG, FE]]]}})
    assert [grouping_label(p) for p in listed.partitions()] == [f"{FE} | {BG}", f"{FE}+{BG}"]


def test_simplex_weights_are_positive_sum_to_one_and_uniform():
    weights = simplex({"a": 0.3, "b": 0.5, "c": 0.9})
    assert math.isclose(sum(weights.values()), 1.0) and all(w > 0 for w in weights.values())
    assert weights["a"] > weights["b"] > weights["c"]  # -log u falls with u
    equal = simplex({"a": 0.2, "b": 0.2})
    assert equal == {"a": 0.5, "b": 0.5}
    assert math.isclose(sum(simplex({"a": 0.0, "b": 1.0}).values()), 1.0)  # the ends of [0, 1) stay finite
    rng = random.Random(0)
    draws = [simplex({k: rng.random() for k in "abc"})["a"] for _ in range(20000)]
    # uniform on the 2-simplex: w_a ~ Beta(1, 2), mean 1/3, P(w_a < 0.5) = 0.75
    assert abs(sum(draws) / len(draws) - 1 / 3) < 0.01
    assert abs(sum(w < 0.5 for w in draws) / len(draws) - 0.75) < 0.01


def test_objective_is_the_mean_error_relative_to_alone():
    errors, references = {"a": 0.05, "b": 0.4}, {"a": 0.1, "b": 0.5}
    assert relative_errors(errors, references) == pytest.approx({"a": 0.5, "b": 0.8})
    assert objective(errors, references) == pytest.approx(0.65)
    assert objective(references, references) == pytest.approx(1.0)
    assert math.isnan(objective({"a": math.nan, "b": 0.4}, references))
    with pytest.raises(ConfigError, match="no single-task reference error for task\\(s\\) b"):
        objective(errors, {"a": 0.1})


def test_task_errors_are_mae_or_one_minus_auc():
    tasks = [TaskSpec(name=FE), TaskSpec(name="is_metal", kind="binary", derive="band_gap == 0")]
    metrics = {FE: {"mae": 0.04, "rmse": 0.1}, "is_metal": {"auc": 0.9}}
    assert task_errors(metrics, tasks) == pytest.approx({FE: 0.04, "is_metal": 0.1})
    assert math.isnan(task_errors({}, tasks)[FE])
    auxiliary = [*tasks, TaskSpec(name="volume", auxiliary=True)]
    assert task_errors({**metrics, "volume": {"mae": 3.0}}, auxiliary).keys() == {FE, "is_metal"}


def test_sharing_methods_can_be_searched(tiny):
    space = parse_space(
        {
            **tiny.model_dump(),
            "space": {
                "strategy": ["fixed", "dwa"],
                "groupings": "joint",
                "choices": {
                    "model.shared_convs": [0, 2],
                    "loss.gradient_surgery": ["none", "pcgrad"],
                    "loss.temperature": [1.0, 2.0],
                },
            },
        }
    )
    assert {"strategy", "model.shared_convs", "loss.gradient_surgery", "loss.temperature"} <= set(param_space(space))
    point = {"strategy": "dwa", "model.shared_convs": 0, "loss.gradient_surgery": "pcgrad", "loss.temperature": 1.0}
    config = trial_config(space, point)
    assert (config.loss.strategy, config.loss.gradient_surgery, config.loss.temperature) == ("dwa", "pcgrad", 1.0)
    assert config.model.shared_convs == 0 and config.loss.weights is None
    assert trial_config(space, {}).loss.gradient_surgery == "none"  # each choice's first value


def test_auxiliary_tasks_need_no_reference(tiny):
    train = {**tiny.train, "tasks": [*tiny.train["tasks"], {"name": "volume", "auxiliary": True}]}
    space = parse_space({**tiny.model_dump(), "train": train, "space": {"groupings": "joint"}})
    assert space.task_names() == [FE, BG, "volume"] and space.scored_task_names() == [FE, BG]


def _with_auxiliary(tiny, space: dict):
    """The tiny space with two auxiliary tasks (volume, magnetization) in its base config."""
    extra = [{"name": n, "column": n, "auxiliary": True} for n in ("volume", "magnetization")]
    return parse_space(
        {**tiny.model_dump(), "train": {**tiny.train, "tasks": [*tiny.train["tasks"], *extra]}, "space": space}
    )


def test_the_tune_chooses_which_auxiliary_tasks_train(tiny):
    space = _with_auxiliary(
        tiny, {"groupings": "joint", "strategy": ["fixed"], "auxiliary": [[], ["magnetization", "volume"], ["volume"]]}
    )
    assert space.auxiliary_options() == ["none", "volume+magnetization", "volume"]  # task order, as labels
    assert param_space(space)["auxiliary"].categories == space.auxiliary_options()
    assert [p["auxiliary"] for p in first_points(space)] == space.auxiliary_options()  # each set tried first
    names = lambda config: [t.name for t in config.tasks]  # noqa: E731
    assert names(trial_config(space, {})) == [FE, BG]  # the first set: none
    both = trial_config(space, {"auxiliary": "volume+magnetization", **{f"w_{n}": 0.5 for n in space.task_names()}})
    assert names(both) == [FE, BG, "volume", "magnetization"] and len(both.loss.weights) == 4
    only = trial_config(space, {"auxiliary": "volume", **{f"w_{n}": 0.5 for n in space.task_names()}})
    assert names(only) == [FE, BG, "volume"] and set(only.loss.weights) == {FE, BG, "volume"}
    assert space.scored_task_names() == [FE, BG]  # references: the served tasks only


def test_a_grouping_loses_the_auxiliary_tasks_a_trial_leaves_out(tiny):
    space = _with_auxiliary(
        tiny,
        {
            "groupings": [[[FE, "volume"], [BG, "magnetization"]], [[FE], [BG], ["volume", "magnetization"]]],
            "auxiliary": [["volume"], []],
        },
    )
    tried_first = [(p["grouping"], p["auxiliary"]) for p in first_points(space)]
    apart, paired = f"{FE} | {BG} | volume+magnetization", f"{FE}+volume | {BG}+magnetization"
    assert tried_first == [(paired, "volume"), (apart, "volume"), (paired, "none")]
    config = trial_config(space, {"grouping": f"{FE}+volume | {BG}+magnetization", "auxiliary": "volume"})
    assert config.model.groups == [[FE, "volume"], [BG]]
    config = trial_config(space, {"grouping": f"{FE} | {BG} | volume+magnetization", "auxiliary": "none"})
    assert config.model.groups == [[FE], [BG]]  # the auxiliary-only group is gone
    unset = _with_auxiliary(tiny, {"groupings": "joint"})
    assert [t.name for t in trial_config(unset, {}).tasks] == [FE, BG, "volume", "magnetization"]  # all, as before


def test_an_auxiliary_set_must_name_auxiliary_tasks(tiny):
    with pytest.raises(ConfigError, match=r"space.auxiliary: 'band_gap' is not an auxiliary task.*volume"):
        _with_auxiliary(tiny, {"auxiliary": [["band_gap"]]})


def test_a_point_becomes_a_train_config(tiny):
    point = {"grouping": f"{FE} | {BG}", "strategy": "fixed", f"w_{FE}": 0.2, f"w_{BG}": 0.6, "lr": 0.004}
    config = trial_config(tiny, point, run_name="t-1")
    assert config.model.groups == [[FE], [BG]] and config.run_name == "t-1"
    assert config.loss.strategy == "fixed" and config.optim.lr == 0.004
    assert sum(config.loss.weights.values()) == pytest.approx(1.0)
    assert config.loss.weights[FE] > config.loss.weights[BG]
    learned = trial_config(tiny, {**point, "grouping": f"{FE}+{BG}", "strategy": "uncertainty"})
    assert learned.model.groups is None and learned.loss.weights is None
    assert learned.epochs == 2 and learned.model.atom_fea_len == 32  # the rest is the base


def test_reference_runs_one_task_with_the_base_budget(tiny):
    config = reference_config(tiny, BG, run_name="ref")
    assert [t.name for t in config.tasks] == [BG] and config.model.groups is None
    assert config.epochs == tiny.base_config().epochs and config.loss.weights is None


def test_param_space_varies_only_what_the_space_asks(tiny):
    assert set(param_space(tiny)) == {"grouping", "strategy", f"w_{FE}", f"w_{BG}", "lr"}
    fixed = parse_space(
        {
            **tiny.model_dump(),
            "space": {"strategy": ["uncertainty"], "groupings": "joint", "choices": {"model.n_conv": [2, 3]}},
        }
    )
    assert set(param_space(fixed)) == {"model.n_conv"}
    assert trial_config(fixed, {"model.n_conv": 3}).model.n_conv == 3
    assert trial_config(fixed, {}).loss.strategy == "uncertainty"


def test_each_grouping_is_tried_first_at_the_centre_of_the_space(tiny):
    points = first_points(tiny)
    assert [p["grouping"] for p in points] == [f"{FE}+{BG}", f"{FE} | {BG}"]
    assert all(set(p) == set(param_space(tiny)) for p in points)  # complete points, as Optuna requires
    config = trial_config(tiny, points[1])
    assert config.loss.weights == {FE: 0.5, BG: 0.5} and config.optim.lr == pytest.approx((0.003 * 0.02) ** 0.5)
    assert len(first_points(parse_space({**tiny.model_dump(), "trials": 1}))) == 1  # never more than the budget
    assert first_points(parse_space({**tiny.model_dump(), "space": {"groupings": "joint"}})) == []


def test_shipped_spaces_load_and_round_trip(tiny):
    mt3 = load_space("configs/tune/mt3.yaml")
    assert mt3.task_names() == [FE, BG, "efermi", "is_metal"] and len(mt3.partitions()) == 15
    assert mt3.base_config().model.atom_fea_len == 64  # from the base file configs/mt3.yaml
    assert mt3.algorithm() == "optuna" and tiny.algorithm() == "optuna"
    assert parse_space({**tiny.model_dump(), "search": "auto"}).algorithm() == "random"  # 4 trials: TPE's start-up
    methods = load_space("configs/tune/methods.yaml")
    assert methods.scored_task_names() == [FE, BG, "efermi"] and methods.auxiliary_options()[0] == "none"
    assert {"auxiliary", "strategy", "model.shared_convs", "loss.gradient_surgery"} <= set(param_space(methods))
    for space in (tiny, mt3, methods):
        assert parse_space(yaml.safe_load(dump_yaml(space))) == space


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"references": {"bulk_modulus": 1.0}}, "references.bulk_modulus: no such task"),
        ({"references": {BG: 0.0}}, f"references.{BG}: 0.0 must be a positive number"),
        ({"space": {"choices": {"optim.lr": [0.1]}}}, "space.choices.optim.lr: this key is set by the tune"),
        ({"space": {"choices": {"loss.strategy": ["dwa"]}}}, "space.choices.loss.strategy: this key is set by"),
        ({"space": {"choices": {"loss.weights": [None]}}}, "space.choices.loss.weights: this key is set by"),
        ({"space": {"choices": {"model.shared_convs": [3]}}}, "shared_convs 3 exceeds n_conv 2"),
        ({"space": {"strategy": ["gradnorm"]}}, "space.strategy"),
        ({"space": {"choices": {"model.width": [8]}}}, "model.width"),
        ({"space": {"choices": {"model.n_conv": [0]}}}, "model.n_conv"),
        ({"space": {"groupings": [[[FE]]]}}, "must partition the tasks"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "space.lr"),
        ({"trials": 0}, "trials"),
        ({"sapce": {}}, "sapce"),
    ],
)
def test_space_mistakes_name_the_key(tiny, change, message):
    with pytest.raises(ConfigError) as err:
        parse_space({**tiny.model_dump(), **change}, source="s.yaml")
    assert message in str(err.value)


def test_too_many_tasks_to_enumerate_and_missing_base(tmp_path, tiny):
    five = [{"name": n} for n in (FE, BG, "efermi", "volume", "total_magnetization")]
    with pytest.raises(ConfigError, match="'all' would try 52 groupings of 5 tasks"):
        parse_space({**tiny.model_dump(), "train": {**tiny.train, "tasks": five}})
    path = tmp_path / "space.yaml"
    path.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"base 'nowhere\.yaml' does not exist"):
        load_space(path)


@pytest.mark.parametrize(
    ("requested", "scaling", "cluster", "expected"),
    [
        (4, ScalingConfig(workers=1, cpus_per_worker=0.5), {"CPU": 2.0}, 1),
        (2, ScalingConfig(workers=1, cpus_per_worker=0.5), {"CPU": 4.0}, 2),
        (8, ScalingConfig(gpus=1, cpus_per_worker=4), {"CPU": 64.0, "GPU": 8.0}, 8),
        (8, ScalingConfig(gpus=2, cpus_per_worker=1), {"CPU": 64.0, "GPU": 8.0}, 4),
    ],
)
def test_concurrency_never_exceeds_the_cluster(requested, scaling, cluster, expected):
    assert trial.plan_concurrency(requested, scaling, cluster) == expected


@pytest.mark.parametrize(
    ("scaling", "cluster", "message"),
    [
        (
            ScalingConfig(gpus=1),
            {"CPU": 2.0},
            "--gpus-per-trial 1 asks for 1 GPU workers, but the Ray cluster has no GPU (2 CPUs)",
        ),
        (ScalingConfig(gpus=4), {"CPU": 64.0, "GPU": 2.0}, "the Ray cluster has 2 GPU(s)"),
        (
            ScalingConfig(workers=4, cpus_per_worker=0.5),
            {"CPU": 2.0},
            "4 worker(s) x 0.5 CPU + 1 CPU for Ray Data + 0.01 CPU for the trial need 3.01 CPUs; "
            "the Ray cluster has 2. Lower --workers-per-trial",
        ),
    ],
)
def test_impossible_trials_name_the_shortfall(scaling, cluster, message):
    with pytest.raises(ResourceError) as err:
        trial.plan_concurrency(1, scaling, cluster)
    assert message in str(err.value)


def test_trials_that_compile_need_a_cpp_compiler_before_the_first_trial():
    from torch._inductor import config as inductor_config

    scaling, cluster = ScalingConfig(workers=1), {"CPU": 2.0}
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        assert trial.plan_concurrency(1, scaling, cluster) == 1
        with pytest.raises(ResourceError, match="none was found on this node"):
            trial.plan_concurrency(1, scaling, cluster, compile_convs=True)


class _Captured(callbacks.ObjectiveCallback):
    """The callback's arithmetic without a Tune session: what it would forward is kept."""

    def __init__(self, tasks, references):  # no super().__init__: that needs a Tune session
        self.tasks, self.references, self.history, self.sent = list(tasks), references, {}, []


def test_callback_adds_the_objective_each_epoch_and_the_best_epochs_at_the_end(monkeypatch):
    monkeypatch.setattr(
        callbacks.TuneReportCallback, "after_report", lambda self, ctx, metrics, ckpt: self.sent.append(metrics[0])
    )
    callback = _Captured([TaskSpec(name="a"), TaskSpec(name="b")], {"a": 0.1, "b": 0.5})
    epochs = [(1, 0.2, 0.5, 1.0), (2, 0.05, 0.45, 0.5), (3, 0.08, 0.4, 0.6)]
    for epoch, a, b, score in epochs:
        callback.after_report(None, [{"epoch": epoch, "val_score": score, "val/a/mae": a, "val/b/mae": b}], None)
    callback.after_report(None, [{"best_epoch": 2, "best_val_score": 0.5, "test/a/mae": 0.06}], None)
    assert [m["objective"] for m in callback.sent[:3]] == pytest.approx([1.5, 0.7, 0.8])
    final = callback.sent[-1]
    assert final["objective"] == pytest.approx(0.7) and "epoch" not in final  # the best epoch; ASHA ignores it
    assert final["val_error/a"] == 0.05 and final["min_val_error/b"] == 0.4 and final["test/a/mae"] == 0.06


def test_callback_ends_a_run_with_an_auxiliary_task(monkeypatch):
    """An auxiliary task is trained, never scored: its errors are in no report, and the final one must not ask for
    them (a KeyError there failed every `mtl_aux` trial after its test metrics were logged)."""
    monkeypatch.setattr(
        callbacks.TuneReportCallback, "after_report", lambda self, ctx, metrics, ckpt: self.sent.append(metrics[0])
    )
    callback = _Captured([TaskSpec(name="a"), TaskSpec(name="v", auxiliary=True)], None)
    callback.after_report(None, [{"epoch": 1, "val_score": 0.2, "val/a/mae": 0.2, "val/v/mae": 3.0}], None)
    callback.after_report(None, [{"best_epoch": 1, "best_val_score": 0.2, "test/a/mae": 0.25}], None)
    final = callback.sent[-1]
    assert final["val_error/a"] == 0.2 and final["min_val_error/a"] == 0.2
    assert not any(key.endswith("/v") for key in final)


def _record(space, trial_id, point, status, objective_value, relative):
    config = trial_config(space, point)
    return TrialRecord(
        trial_id,
        point,
        config,
        status,
        2 if status == FINISHED else 1,
        objective_value,
        dict.fromkeys(relative, 0.1),
        relative,
    )


def test_report_ranks_trials_writes_a_trainable_yaml_and_task_affinity(tiny, tmp_path):
    joint, apart = {"grouping": f"{FE}+{BG}", "strategy": "uncertainty"}, {"grouping": f"{FE} | {BG}"}
    trials = [
        _record(tiny, "t1", apart, FINISHED, 1.0, {FE: 1.1, BG: 0.9}),
        _record(tiny, "t2", joint, FINISHED, 0.9, {FE: 0.8, BG: 1.0}),
        _record(tiny, "t3", joint, STOPPED, 0.5, {FE: 0.4, BG: 0.6}),
        _record(tiny, "t4", joint, FINISHED, 0.95, {FE: 0.85, BG: 1.05}),
    ]
    report = build_report(trials, "tiny-tune")
    assert list(report.ranked["trial"]) == ["t2", "t4", "t1", "t3"]  # finished by objective, then stopped early
    assert report.best.trial_id == "t2"
    path = tmp_path / "best.yaml"
    path.write_text(report.best_yaml)
    assert load_config(TrainConfig, path) == trials[1].config
    table = report.affinity.set_index(["task", "group"])
    assert table.loc[(FE, f"{FE}+{BG}"), "best_relative_error"] == 0.8
    assert table.loc[(FE, f"{FE}+{BG}"), "trials"] == 2
    assert table.loc[(BG, BG), "best_relative_error"] == 0.9
    assert list(report.affinity["group"])[:2] == [FE, BG]  # smaller groups first
    assert report.heatmap.startswith(b"\x89PNG")
    assert "auxiliary" not in report.ranked  # no trial trained one


def test_the_ranked_table_names_each_trials_auxiliary_tasks(tiny):
    space = _with_auxiliary(tiny, {"groupings": "joint", "auxiliary": [[], ["volume"]]})
    trials = [
        _record(space, "t1", {"auxiliary": "volume"}, FINISHED, 0.9, {FE: 0.9, BG: 0.9}),
        _record(space, "t2", {"auxiliary": "none"}, FINISHED, 1.0, {FE: 1.0, BG: 1.0}),
    ]
    assert list(build_report(trials, "aux").ranked["auxiliary"]) == ["volume", "none"]


def test_the_cli_table_abbreviates_auxiliary_tasks_in_groupings(tiny, capsys):
    """Auxiliary tasks sit in groupings but have no reference column: the table used to fail on their names."""
    from dataclasses import replace

    from mtc.tune.driver import TuneOutcome
    from mtc_cli.tune import print_outcome

    space = _with_auxiliary(tiny, {"groupings": "joint", "auxiliary": [[], ["volume", "magnetization"]]})
    trials = [_record(space, "t1", {"auxiliary": "volume+magnetization"}, FINISHED, 0.9, {FE: 0.9, BG: 0.9})]
    report = replace(build_report(trials, "aux"), best=None)
    print_outcome(TuneOutcome("aux", "run-1", {FE: 0.1, BG: 0.4}, trials, report, 0))
    out = capsys.readouterr().out
    assert "fepa+bg+volume+magnetization" in out and "volume+magnetization" in out
