"""Experiment report on synthetic trial records: mean ± std per cell, change vs alone, significance, plots."""

from __future__ import annotations

import math

import pytest

from mtc.experiment.plots import report_plots
from mtc.experiment.report import ERROR, FINISHED, SIGNIFICANCE_RULE, TrialRecord, build_report
from mtc.experiment.spec import parse_spec

TASKS = [{"name": "formation_energy_per_atom", "unit": "eV/atom"}, {"name": "band_gap", "unit": "eV"}]
FE, BG = "formation_energy_per_atom", "band_gap"


def make_spec():
    return parse_spec({"train": {"tasks": TASKS, "epochs": 1}, "seeds": [0, 1, 2], "fractions": [0.5, 1.0]})


def record(point, maes, status=FINISHED, k=0):
    metrics = {f"test/{t}/mae": v for t, v in maes.items()}
    metrics.update({f"test/{t}/spearman": 0.9 for t in maes})
    if BG in maes:
        metrics[f"test/{BG}/metal_auc"] = 0.8 + 0.01 * point["seed"]
    return TrialRecord(f"t{k}", point, status, metrics, f"run{k}")


# seed -> error: alone FE 0.10/0.11/0.12 (std 0.01); all: FE 0.13/0.14/0.15 (+30 %, significant), BG within spread
ALONE = {FE: [0.10, 0.11, 0.12], BG: [0.50, 0.60, 0.70]}
JOINT = {FE: [0.13, 0.14, 0.15], BG: [0.49, 0.59, 0.69]}


def records(spec, failed_seed=None):
    found = []
    for k, point in enumerate(spec.points()):
        seed, tasks = point["seed"], ([point["setting"]] if point["setting"] != "all" else [FE, BG])
        table = ALONE if point["setting"] != "all" else JOINT
        status = ERROR if seed == failed_seed and point["setting"] == "all" else FINISHED
        found.append(record(point, {t: table[t][seed] for t in tasks}, status, k))
    return found


def test_cells_hold_mean_std_and_seed_count_and_single_task_cells_appear_in_both_bases():
    spec = make_spec()
    report = build_report(spec, records(spec), "synthetic")
    cells = report.cells.set_index(["setting", "basis", "fraction"])
    assert len(cells) == 3 * 2 * 2
    fe = cells.loc[(FE, "equal_compute", 1.0)]
    assert fe["seeds"] == 3 and fe["epochs"] == 1
    assert fe[f"{FE} mae mean"] == pytest.approx(0.11) and fe[f"{FE} mae std"] == pytest.approx(0.01)
    assert cells.loc[(FE, "equal_steps", 1.0)][f"{FE} mae mean"] == pytest.approx(0.11)  # the same trials
    joint = cells.loc[("all", "equal_compute", 1.0)]
    assert joint["epochs"] == 2
    assert joint["metal auc mean"] == pytest.approx(0.81) and joint[f"{FE} spearman mean"] == pytest.approx(0.9)
    assert math.isnan(cells.loc[(FE, "equal_steps", 1.0)]["metal auc mean"])  # no band-gap head


def test_relative_change_and_the_significance_rule():
    spec = make_spec()
    cells = build_report(spec, records(spec), "synthetic").cells.set_index(["setting", "basis", "fraction"])
    joint = cells.loc[("all", "equal_steps", 0.5)]
    assert joint[f"{FE} rel change"] == pytest.approx(0.03 / 0.11)
    assert joint[f"{FE} significant"] is True  # |0.03| > 0.01 + 0.01
    assert joint[f"{BG} rel change"] == pytest.approx(-0.01 / 0.6)
    assert joint[f"{BG} significant"] is False  # |0.01| < 0.1 + 0.1
    assert math.isnan(cells.loc[(FE, "equal_steps", 0.5)][f"{FE} rel change"])


def test_unfinished_trials_stay_out_of_the_cells_but_in_the_trials_table():
    spec = make_spec()
    report = build_report(spec, records(spec, failed_seed=2), "synthetic")
    joint = report.cells.set_index(["setting", "basis", "fraction"]).loc[("all", "equal_steps", 1.0)]
    assert joint["seeds"] == 2 and joint[f"{FE} mae mean"] == pytest.approx(0.135)
    assert len(report.trials) == len(spec.points())
    failed = report.trials[report.trials["status"] == ERROR]
    assert len(failed) == 4 and failed[f"{FE} mae"].isna().all()


def test_summary_states_the_rule_and_marks_significant_changes_per_basis():
    spec = make_spec()
    summary = build_report(spec, records(spec), "synthetic").summary
    assert SIGNIFICANCE_RULE in summary
    assert "## equal steps" in summary and "## equal compute" in summary
    assert "| all | 1.0 | 3 | – | +27.3% * | -1.7% |" in summary  # no run logged its size here
    assert "| formation_energy_per_atom | 1.0 | 3 | – | 0.11 ± 0.01 |  |" in summary


def test_summary_shows_a_settings_own_error_where_no_task_alone_was_run():
    """A multitask-only experiment (or a widened one before its single-task trials finish) still reads as figures."""
    spec = parse_spec(
        {
            "train": {"tasks": TASKS, "epochs": 1},
            "settings": {"alone": False, "all": True},
            "seeds": [0, 1, 2],
            "bases": ["equal_steps"],
        }
    )
    found = [record(p, {t: JOINT[t][p["seed"]] for t in (FE, BG)}, k=k) for k, p in enumerate(spec.points())]
    summary = build_report(spec, found, "joint only").summary
    assert "| all | 3 | – | 0.14 ± 0.01 | 0.59 ± 0.1 |" in summary
    assert "no single-task cell to compare with" in summary


def test_plots_per_basis_are_pngs():
    spec = make_spec()
    plots = report_plots(build_report(spec, records(spec), "synthetic"), spec.bases, [])
    assert sorted(plots) == [
        "change_vs_alone_equal_compute.png",
        "change_vs_alone_equal_steps.png",
        "error_vs_fraction_equal_compute.png",
        "error_vs_fraction_equal_steps.png",
    ]
    assert all(png.startswith(b"\x89PNG") for png in plots.values())


def test_data_efficiency_compares_every_smaller_fraction_with_each_task_alone_on_the_largest():
    spec = make_spec()
    # fraction 0.5: alone FE 0.13/0.14/0.15 (+27 % vs its own full data); all FE 0.10/0.11/0.12 (= alone at 1.0)
    half = {"alone": {FE: [0.13, 0.14, 0.15], BG: [0.70, 0.80, 0.90]}, "all": {FE: [0.10, 0.11, 0.12], BG: ALONE[BG]}}
    found = []
    for k, point in enumerate(spec.points()):
        joint = point["setting"] == "all"
        table = (half["all"] if joint else half["alone"]) if point["fraction"] == 0.5 else (JOINT if joint else ALONE)
        tasks = [FE, BG] if joint else [point["setting"]]
        found.append(record(point, {t: table[t][point["seed"]] for t in tasks}, k=k))
    report = build_report(spec, found, "synthetic")
    cells = report.cells.set_index(["setting", "basis", "fraction"])
    alone_half = cells.loc[(FE, "equal_steps", 0.5)]
    assert alone_half[f"{FE} rel change vs full data"] == pytest.approx(0.03 / 0.11)
    assert alone_half[f"{FE} significant vs full data"] is True
    joint_half = cells.loc[("all", "equal_steps", 0.5)]
    assert joint_half[f"{FE} rel change vs full data"] == pytest.approx(0.0, abs=1e-12)
    assert joint_half[f"{FE} significant vs full data"] is False
    assert joint_half[f"{FE} rel change"] == pytest.approx(-0.03 / 0.14)  # vs alone on the same half
    assert math.isnan(cells.loc[("all", "equal_steps", 1.0)][f"{FE} rel change vs full data"])
    assert "## data efficiency" in report.summary
    assert "| all | equal steps | 0.5 | 3 | +0.0% | +0.0% |" in report.summary


def test_each_cell_and_the_summary_state_the_models_size():
    """Equal steps is a fair comparison only at a known size: the runs' n_parameters reach cells.csv and summary.md."""
    spec = make_spec()
    found = records(spec)
    for r in found:
        r.parameters = 80_833 if r.point["setting"] != "all" else 241_694
    found[-1].parameters = None  # a run that logged no size does not hide its cell's
    report = build_report(spec, found, "sized")
    cells = report.cells.set_index(["setting", "basis", "fraction"])
    assert cells.loc[("all", "equal_steps", 1.0)]["parameters"] == 241_694
    assert cells.loc[(FE, "equal_steps", 0.5)]["parameters"] == 80_833
    assert set(report.trials["parameters"].dropna()) == {80_833, 241_694}
    header = next(line for line in report.summary.splitlines() if line.startswith("| setting"))
    assert "| seeds | parameters |" in header
    assert "| 241,694 |" in report.summary and "| 80,833 |" in report.summary
    unsized = build_report(spec, records(spec), "unsized")
    assert "| – |" in unsized.summary and unsized.cells["parameters"].isna().all()


def test_what_to_serve_names_each_tasks_setting_and_why():
    spec = make_spec()  # FE: all +27 % beyond the spread; BG: all -1.7 % within it
    summary = build_report(spec, records(spec), "synthetic").summary
    assert "## what to serve" in summary
    fe = "| formation_energy_per_atom | alone | 0.11 ± 0.01 |  | no setting beats it; closest: all +27.3% * |"
    assert f"| equal steps | 1.0 {fe}" in summary
    assert "| equal steps | 1.0 | band_gap | all | 0.59 ± 0.1 | -1.7% | as good as alone |" in summary


def test_what_to_serve_prefers_a_setting_shown_better_over_a_lower_but_noisy_mean():
    spec = parse_spec(
        {
            "train": {"tasks": TASKS, "epochs": 1},
            "settings": {"alone": True, "all": True, "noisy": {"model.atom_fea_len": 8}},
            "seeds": [0, 1, 2],
            "bases": ["equal_steps"],
        }
    )
    errors = {  # band gap: all 0.47 ± 0.01 (-21.7 % *), noisy 0.40 ± 0.3 (lower, within the spread); FE all -0.9 %
        FE: ALONE,
        BG: ALONE,
        "all": {FE: [0.099, 0.109, 0.119], BG: [0.46, 0.47, 0.48]},
        "noisy": {FE: [0.13, 0.14, 0.15], BG: [0.10, 0.40, 0.70]},
    }
    found = []
    for k, point in enumerate(spec.points()):
        table = errors[point["setting"]]
        tasks = [point["setting"]] if point["setting"] in (FE, BG) else [FE, BG]
        found.append(record(point, {t: table[t][point["seed"]] for t in tasks}, k=k))
    summary = build_report(spec, found, "synthetic").summary
    assert "| equal steps | band_gap | all | 0.47 ± 0.01 | -21.7% * | beats alone: sharing pays |" in summary
    assert "| equal steps | formation_energy_per_atom | all | 0.109 ± 0.01 | -0.9% | as good as alone |" in summary


def test_what_to_serve_keeps_an_axis_value_of_null():
    """``model.shared_convs: null`` (one trunk per group) is a value of the axis, not a missing one."""
    spec = parse_spec(
        {
            "train": {"tasks": TASKS, "epochs": 1},
            "seeds": [0, 1, 2],
            "bases": ["equal_steps"],
            "axes": {"model.shared_convs": [None, 1]},
        }
    )
    found = []
    for k, point in enumerate(spec.points()):
        table, tasks = (JOINT, [FE, BG]) if point["setting"] == "all" else (ALONE, [point["setting"]])
        found.append(record(point, {t: table[t][point["seed"]] for t in tasks}, k=k))
    summary = build_report(spec, found, "axes").summary
    serve = summary[summary.index("## what to serve") :]
    assert serve.count("| band_gap | all | 0.59 ± 0.1 | -1.7% | as good as alone |") == 2  # one per axis value
