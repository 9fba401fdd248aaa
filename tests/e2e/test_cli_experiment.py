"""``mtc experiment`` through the CLI on real mp36k crystals: the grid as Tune trials, MLflow runs, report, resume."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mtc_cli.app import app
from tests.e2e.runs import child_runs, download, parent_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
SPEC = "configs/experiments/tiny.yaml"
NAME = "tiny-experiment-e2e"


def test_tiny_experiment_runs_every_cell_over_seeds_reports_and_resumes_without_rerunning(
    demo_shards, ray_session, tmp_path
):
    started = time.perf_counter()
    start = ["experiment", SPEC, "--data", str(demo_shards), "--name", NAME, "--set", "settings.all=false"]
    spent = runner.invoke(app, [*start, "--budget-minutes", "0"])  # `all` is added by a widening --resume below
    budget_seconds = time.perf_counter() - started
    assert spent.exit_code == 0, spent.output
    assert spent.output.count("not started: the time budget was spent") == 2
    assert "parameters: band_gap " in spent.output  # the sizes, before any trial
    assert "errored" not in spent.output and "Error file" not in spent.output  # mtc's line is the one per trial
    assert f"2 trial(s) not started; the report covers what finished; continue with mtc experiment --resume {NAME}" in (
        spent.output.replace("\n", " ")
    )
    parent = parent_run("experiment", NAME)
    assert parent.info.status == "KILLED" and parent.data.tags["mtc.experiment.state"] == "budget spent"
    assert child_runs(parent.info.run_id) == []

    started = time.perf_counter()
    alone = runner.invoke(app, ["experiment", "--resume", NAME])  # no budget: the rest (here: all) runs
    assert alone.exit_code == 0, alone.output
    alone_runs = {c.info.run_id for c in child_runs(parent.info.run_id)}
    assert len(alone_runs) == 2

    refused = runner.invoke(app, ["experiment", "--resume", NAME, "--set", "train.optim.lr=0.5"])
    assert refused.exit_code == 2 and "changes how experiment" in refused.output and "(optim.lr)" in refused.output
    assert "Traceback" not in refused.output and parent_run("experiment", NAME).info.status == "FINISHED"

    result = runner.invoke(app, ["experiment", "--resume", NAME, "--set", "settings.all=true"])  # widened
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "--set settings.all=true adds 2 trial(s): 4 in all" in result.output and ", all " in result.output
    assert "## equal compute" in result.output
    assert "report/cells.csv" in result.output

    parent = parent_run("experiment", NAME)
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "2"  # params: as started
    assert parent.data.tags["mtc.experiment.state"] == "complete"
    assert parent.data.tags["mtc.experiment.widened"] == "settings.all=true"
    children = child_runs(parent.info.run_id)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert alone_runs < {c.info.run_id for c in children}  # the finished trials were kept, not run again
    for child in children:
        tags = child.data.tags
        assert tags["mtc.experiment.trial"] in alone.output + result.output  # a line per finished trial
        assert (
            int(child.data.params["seed"]) == int(tags["mtc.experiment.seed"])
            and child.data.params["split.seed"] == "0"
        )
        assert child.data.params["epochs"] == tags["mtc.experiment.epochs"]
    joint = [c for c in children if c.data.tags["mtc.experiment.setting"] == "all"]
    assert sorted(int(c.data.params["epochs"]) for c in joint) == [2, 2]  # equal compute: two tasks, twice the steps
    assert all(int(c.data.params["n_train"]) < 400 for c in children)  # a few hundred
    assert len({int(c.data.params["n_test"]) for c in children}) == 1  # one test split for all

    folder = download(parent.info.run_id, "report", tmp_path)
    cells = pd.read_csv(folder / "cells.csv")
    assert len(cells) == 2 and (cells["seeds"] == 2).all()  # band_gap alone, all
    joint_cells = cells[cells["setting"] == "all"]
    assert (joint_cells["formation_energy_per_atom mae mean"] > 0).all()
    assert (cells["band_gap mae mean"] > 0).all() and (cells["band_gap mae std"] >= 0).all()
    assert joint_cells["band_gap rel change"].notna().all()  # against band gap alone, the same seeds
    assert cells["metal auc mean"].between(0, 1).all()
    assert joint_cells["formation_energy_per_atom spearman mean"].between(-1, 1).all()
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial": str, "run_id": str})
    assert len(trials) == 4 and (trials["status"] == "finished").all()
    assert set(trials["run_id"]) == {c.info.run_id for c in children}
    sizes = {c.data.tags["mtc.experiment.setting"]: int(c.data.params["n_parameters"]) for c in children}
    assert dict(zip(cells["setting"], cells["parameters"], strict=True)) == sizes  # each cell states its model's size
    summary = (folder / "summary.md").read_text()
    assert "significant (*) only when |Δ mean| > std_a + std_b" in summary
    assert "| equal compute | formation_energy_per_atom | all |" in summary  # what to serve: no alone to weigh
    assert re.search(r"\| equal compute \| band_gap \| (alone|all) \| [0-9.]+ ± [0-9.]+ \|", summary), summary
    for basis in ("equal_compute",):
        for stem in ("error_vs_fraction", "change_vs_alone"):
            assert (folder / f"{stem}_{basis}.png").read_bytes().startswith(b"\x89PNG")

    started = time.perf_counter()
    resumed = runner.invoke(app, ["experiment", "--resume", NAME])
    assert resumed.exit_code == 0, resumed.output
    assert len(child_runs(parent.info.run_id)) == 4  # nothing ran again
    stored = yaml.safe_load((download(parent.info.run_id, "experiment", tmp_path) / "spec.yaml").read_text())
    assert stored["settings"]["all"] is True  # the widened spec is the one a later --resume continues
    assert parent_run("experiment", NAME).info.status == "FINISHED"
    print(
        f"budget 0: {budget_seconds:.0f} s; the 4 trials on resume and widening {seconds:.0f} s; "
        f"resume of a finished experiment {time.perf_counter() - started:.0f} s"
    )

    again = runner.invoke(app, ["experiment", SPEC, "--data", str(demo_shards), "--name", NAME])
    assert again.exit_code == 2 and f"continue it with --resume {NAME}" in again.output


def test_a_spec_naming_an_unknown_task_fails_before_any_trial(demo_shards, tmp_path):
    spec = tmp_path / "bad.yaml"
    text = Path(SPEC).read_text().replace("base: ../tiny.yaml", f"base: {Path('configs/tiny.yaml').resolve()}")
    spec.write_text(text.replace("settings: {alone: [band_gap], all: true}", "settings: {alone: [gap]}"))
    result = runner.invoke(app, ["experiment", str(spec), "--data", str(demo_shards)])
    assert result.exit_code == 2 and "settings.alone: no task 'gap'" in result.output
    assert "Traceback" not in result.output
