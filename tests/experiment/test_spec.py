"""Experiment specs: strict parsing, errors that name the key, the grid (cells, shared trials, epochs, seeds)."""

from __future__ import annotations

from collections import Counter

import pytest

from mtc.config import ConfigError, TrainConfig, load_config
from mtc.experiment.runner import model_sizes
from mtc.experiment.spec import load_spec, parse_spec, point_key, widen

TASKS = [{"name": "formation_energy_per_atom"}, {"name": "band_gap"}, {"name": "efermi"}]


def spec(**fields):
    return parse_spec({"train": {"tasks": TASKS, "epochs": 4}, **fields})


def test_alone_pairs_all_and_named_settings():
    grid = spec(settings={"alone": True, "pairs": True, "all": True, "wide": {"model.atom_fea_len": 128}})
    settings = {s.name: s for s in grid.all_settings()}
    assert list(settings) == [
        "formation_energy_per_atom",
        "band_gap",
        "efermi",
        "formation_energy_per_atom+band_gap",
        "formation_energy_per_atom+efermi",
        "band_gap+efermi",
        "all",
        "wide",
    ]
    assert settings["wide"].tasks == ("formation_energy_per_atom", "band_gap", "efermi")
    config = grid.trial_config({"setting": "wide", "fraction": 1.0, "epochs": 4, "seed": 0})
    assert config.model.atom_fea_len == 128 and len(config.tasks) == 3


def test_two_tasks_list_their_pair_once_as_all():
    grid = spec(tasks=["band_gap", "efermi"], settings={"pairs": True})
    assert [s.name for s in grid.all_settings()] == ["band_gap", "efermi", "all"]


def test_equal_compute_trains_k_times_the_epochs_and_single_task_trials_are_shared():
    grid = spec(settings={"alone": ["band_gap", "efermi"], "pairs": [["band_gap", "efermi"]]}, seeds=[0, 1, 2])
    cells = grid.cells()
    assert len(cells) == 4 * 2  # band_gap, efermi, the pair, all; two bases
    epochs = {(c.setting, c.basis): c.epochs for c in cells}
    assert epochs[("band_gap", "equal_steps")] == epochs[("band_gap", "equal_compute")] == 4
    assert epochs[("band_gap+efermi", "equal_steps")] == 4 and epochs[("band_gap+efermi", "equal_compute")] == 8
    assert epochs[("all", "equal_steps")] == 4 and epochs[("all", "equal_compute")] == 12
    points = grid.points()
    assert len(points) == (2 + 2 * 2) * 3  # two single-task settings run once for both bases, 3 seeds each
    assert Counter(p["setting"] for p in points) == {"band_gap": 3, "efermi": 3, "band_gap+efermi": 6, "all": 6}
    assert {p["seed"] for p in points} == {0, 1, 2}


def test_seed_varies_the_model_and_the_split_stays_fixed():
    grid = spec(train={"tasks": TASKS, "epochs": 2, "split": {"seed": 7, "train_fraction": 0.5}}, fractions=[0.5, 1])
    configs = [grid.trial_config(p) for p in grid.points()]
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.split.seed for c in configs} == {7}
    assert {c.split.train_fraction for c in configs} == {0.25, 0.5}  # fractions of the base's training rows


def test_axes_are_cartesian_with_settings_and_fractions():
    grid = spec(
        settings={"alone": False, "all": True},
        fractions=[0.5, 1.0],
        axes={"model.atom_fea_len": [32, 64]},
        seeds=[0, 1],
    )
    assert len(grid.cells()) == 1 * 2 * 2 * 2
    points = grid.points()
    assert len(points) == 16
    assert {grid.trial_config(p).model.atom_fea_len for p in points} == {32, 64}


def test_a_setting_on_a_subset_drops_the_base_grouping_and_weights_of_absent_tasks():
    train = {"tasks": TASKS, "model": {"groups": [["formation_energy_per_atom"], ["band_gap", "efermi"]]}}
    train["loss"] = {"weights": {"formation_energy_per_atom": 2.0, "band_gap": 1.0, "efermi": 1.0}}
    grid = parse_spec({"train": train, "settings": {"alone": ["band_gap"], "all": True}})
    alone = grid.trial_config({"setting": "band_gap", "fraction": 1.0, "epochs": 1, "seed": 0})
    assert alone.model.groups is None and alone.loss.weights == {"band_gap": 1.0}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tasks": ["band_gap", "bulk_modulus"]}, "tasks: no task 'bulk_modulus'"),
        ({"settings": {"alone": ["volume"]}}, "settings.alone: no task 'volume'"),
        ({"settings": {"alon": True}}, "alon: a named setting takes a mapping"),
        ({"settings": {"wide": {"model.atom_width": 128}}}, "atom_width"),
        ({"settings": {"wide": {"tasks": ["gap"]}}}, "settings.wide.tasks: no task 'gap'"),
        ({"settings": {"all": {"loss.strategy": "fixed"}}}, "settings.all"),
        ({"axes": {"model.n_convs": [2, 3]}}, "n_convs"),
        ({"axes": {"split.seed": [0, 1]}}, "axes.split.seed: this key is set by the experiment itself"),
        ({"axes": {"model.n_conv": []}}, "axes.model.n_conv: give a non-empty list"),
        ({"seeds": [0]}, "seeds: 1 given, at least 2 needed: every cell is a mean ± std over seeds"),
        ({"seeds": [0, 0, 1]}, "seeds repeat a value"),
        ({"fractions": [0.0, 1.0]}, "fractions: every fraction must lie in"),  # no "Value error, " between
        ({"basis": ["equal_steps"]}, "basis"),
        ({"settings": {"alone": False, "all": False}}, "no setting to run"),
    ],
)
def test_mistakes_fail_before_any_work_naming_the_key(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        spec(**fields)


def test_shipped_specs_parse_and_stay_the_sizes_their_comments_state():
    sizes = {"tiny": 4, "mt3": 21, "fractions": 48, "pairs": 33, "precision": 6, "depth": 15}
    for name, trials in sizes.items():
        assert len(load_spec(f"configs/experiments/{name}.yaml").points()) == trials, name


def test_set_overrides_the_spec_and_its_train_config(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("train: {tasks: [{name: band_gap}, {name: efermi}], epochs: 4}\nseeds: [0, 1, 2]\n")
    grid = load_spec(path, ["seeds=[1, 2]", "train.epochs=2"])
    assert grid.seeds == [1, 2] and grid.base_config().epochs == 2
    with pytest.raises(ConfigError, match=r"with --set seeds=\[1, 1\].*seeds"):
        load_spec(path, ["seeds=[1, 1]"])


def test_a_named_setting_set_to_false_is_left_out():
    grid = spec(settings={"alone": ["band_gap"], "all": False, "mtl": {"model.shared_convs": 2}, "wide": False})
    assert [s.name for s in grid.all_settings()] == ["band_gap", "mtl"]
    with pytest.raises(ConfigError, match="wide: a named setting takes a mapping"):
        spec(settings={"wide": True})


def test_the_efficiency_spec_cut_to_the_targets_cells():
    """The data-efficiency target compares each multitask model on half the training rows (`mtl`, and `mtl_shallow`
    with the default's layout) with each task alone on all of them."""
    half = load_spec("configs/experiments/efficiency.yaml", ["fractions=[0.5]", "settings.alone=false"])
    full = load_spec(
        "configs/experiments/efficiency.yaml", ["fractions=[1.0]", "settings.mtl=false", "settings.mtl_shallow=false"]
    )
    assert [(p["setting"], p["fraction"]) for p in half.points() if p["seed"] == 0] == [
        ("mtl", 0.5),
        ("mtl_shallow", 0.5),
    ]
    assert [(p["setting"], p["fraction"]) for p in full.points() if p["seed"] == 0] == [
        ("band_gap", 1.0),
        ("efermi", 1.0),
    ]
    configs = [half.trial_config(p) for p in half.points() if p["seed"] == 0]
    assert [(c.epochs, c.patience, c.model.shared_convs) for c in configs] == [(150, 20, 2), (150, 20, 1)]
    default = load_config(TrainConfig, "configs/mt3.yaml")
    assert configs[1].model.shared_convs == default.model.shared_convs  # mtl_shallow has the default's layout


def test_the_shipped_specs_state_the_sizes_they_compare():
    """The sizes `mtc experiment` prints before work, for the equal-steps comparisons of issue 11: the three
    single-task models hold 242,499 parameters together; `mtl_equal` (its metal variant, the one-trunk one) no more."""
    size = model_sizes(load_spec("configs/experiments/size.yaml"), radius=8.0)
    alone = [size[t] for t in ("formation_energy_per_atom", "band_gap", "efermi")]
    assert alone == [80_833] * 3
    assert size["mtl_wide"] == 355_475 and size["mtl_wide"] / sum(alone) == pytest.approx(1.466, abs=1e-3)
    assert 0.98 * sum(alone) <= size["mtl_equal"] <= sum(alone)
    assert 0.98 * sum(alone) <= size["mtl_equal_metal"] <= sum(alone)
    assert 0.98 * sum(alone) <= size["mtl_onetrunk_equal"] <= sum(alone)
    assert 0.98 * sum(alone) <= size["mtl_shallow_equal"] <= sum(alone)
    assert 0.98 * size["mtl_wide"] <= size["mtl_shallow_wide"] <= size["mtl_wide"]  # less sharing, same size
    methods = model_sizes(load_spec("configs/experiments/methods.yaml"), radius=8.0)
    assert methods["mtl_wide"] == size["mtl_wide"] and methods["mtl"] < sum(alone)
    depth = model_sizes(load_spec("configs/experiments/depth.yaml"), radius=8.0)
    assert depth["mtl"] == methods["mtl"] < depth["mtl_shallow"] < sum(alone)  # the default, then less sharing


def test_an_axis_that_changes_the_model_gives_each_value_its_size():
    spec = parse_spec(
        {
            "train": {"tasks": [{"name": "band_gap"}], "epochs": 1},
            "seeds": [0, 1],
            "axes": {"model.atom_fea_len": [32, 64]},
        }
    )
    sizes = model_sizes(spec, radius=8.0)
    assert [label for label in sizes if label.startswith("band_gap")] == [
        "band_gap model.atom_fea_len=32",
        "band_gap model.atom_fea_len=64",
    ]
    assert sizes["band_gap model.atom_fea_len=32"] < sizes["band_gap model.atom_fea_len=64"]


def test_resume_with_set_adds_seeds_and_settings_and_keeps_every_trial_as_it_trains():
    grid = spec(settings={"alone": ["band_gap"], "all": False, "mtl": {"model.shared_convs": 2}}, seeds=[0, 1])
    wider = widen(grid, ["seeds=[0, 1, 2, 3]", "settings.all=true"], "experiment x")
    old, new = ({point_key(p) for p in g.points()} for g in (grid, wider))
    # two bases: band_gap alone has a trial per seed, mtl and all one per seed and basis; all at every seed
    assert old < new and len(new - old) == 2 * 1 + 2 * 2 + 4 * 2
    for point in grid.points():  # the finished trials train exactly as before
        assert wider.trial_config(point) == grid.trial_config(point)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seeds=[0, 2]"], "drops the trial band_gap, fraction 1, 4 epochs, seed 1 from experiment x"),
        (["settings.mtl=false"], "drops the trial mtl, fraction 1, 4 epochs, seed 0"),
        (["train.epochs=5"], "drops the trial"),  # the points' epochs change: every old trial is gone
        (["train.optim.lr=0.01"], "changes how experiment x's trial band_gap, fraction 1, 4 epochs, seed 0 trains"),
        (["settings.mtl.model.shared_convs=1"], "trial mtl, fraction 1, 4 epochs, seed 0 trains (model.shared_convs)"),
        (["seeds=[0, 0]"], "seeds repeat a value"),
    ],
)
def test_resume_with_set_refuses_what_would_drop_or_change_a_trial(overrides, message):
    grid = spec(settings={"alone": ["band_gap"], "all": False, "mtl": {"model.shared_convs": 2}}, seeds=[0, 1])
    with pytest.raises(ConfigError) as err:
        widen(grid, overrides, "experiment x")
    assert message in str(err.value)


def test_alone_and_pairs_true_leave_out_what_would_serve_nothing():
    tasks = [*TASKS, {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0", "auxiliary": True}]
    tasks.append({"name": "volume_per_atom", "column": "volume", "per_atom": True, "auxiliary": True})
    grid = parse_spec({"train": {"tasks": tasks, "epochs": 2}, "settings": {"alone": True, "pairs": True}})
    names = [s.name for s in grid.all_settings()]
    assert names[:3] == ["formation_energy_per_atom", "band_gap", "efermi"] and "is_metal" not in names
    assert "band_gap+is_metal" in names and "is_metal+volume_per_atom" not in names  # a pair serves a task
    for point in grid.points():
        grid.trial_config(point)  # every generated setting is a valid training
