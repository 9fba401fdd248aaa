"""``mtc tune`` through the CLI on real mp36k crystals: references, trials, ASHA, MLflow runs, report, resume."""

from __future__ import annotations

import time
from itertools import pairwise

import pandas as pd
import pytest
from typer.testing import CliRunner

from mtc.config import TrainConfig, load_config
from mtc_cli.app import app
from tests.e2e.runs import artifacts, child_runs, download, last_logged, parent_run
from tests.orphans import orphan_placement_group

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
SPACE = "configs/tune/tiny.yaml"
NAME = "tiny-e2e"
TASKS = ["formation_energy_per_atom", "band_gap"]
TRIALS = 2  # one per grouping (each is tried first); the space's 4 only add minutes


def test_tiny_tune_logs_every_trial_reports_its_best_config_and_resumes(demo_shards, ray_session, tmp_path):
    started = time.perf_counter()
    spent = runner.invoke(
        app,
        [
            *["tune", "--data", str(demo_shards), "--space", SPACE, "--name", NAME],
            *["--trials", str(TRIALS), "--max-concurrent", "2", "--budget-minutes", "0"],
        ],
    )
    budget_seconds = time.perf_counter() - started
    assert spent.exit_code == 0, spent.output
    assert "running 1 trial(s) at a time: the Ray cluster holds no more (asked 2)" in spent.output
    assert spent.output.count("not started: the time budget was spent") == TRIALS
    told = f"{TRIALS} trial(s) not started; the report covers what finished; continue with mtc tune --resume {NAME}"
    assert told in spent.output.replace("\n", " ")
    parent = parent_run("tune", NAME)
    assert parent.info.status == "KILLED" and parent.data.tags["mtc.tune.state"] == "budget spent"
    assert len(child_runs(parent.info.run_id)) == len(TASKS)  # the references ran, no trial did

    started = time.perf_counter()
    result = runner.invoke(app, ["tune", "--resume", NAME])  # no budget: the trials left run as a new round
    tune_seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert f"round 2: {TRIALS} trial(s) not finished so far" in result.output
    assert "trials ranked by objective" in result.output

    parent = parent_run("tune", NAME)
    assert parent.data.tags["mtc.tune.state"] == "complete"
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == str(TRIALS)
    references = {t: parent.data.metrics[f"reference/{t}"] for t in TASKS}
    assert all(0 < v < 5 for v in references.values())
    children = child_runs(parent.info.run_id)
    refs = {c.data.tags["mtc.tune.reference"]: c for c in children if "mtc.tune.reference" in c.data.tags}
    trials = [c for c in children if "mtc.tune.trial" in c.data.tags]
    assert sorted(refs) == sorted(TASKS) and all(c.info.status == "FINISHED" for c in refs.values())
    assert len(trials) == TRIALS and len(children) == TRIALS + len(TASKS)
    for child in trials:
        tags, status = child.data.tags, child.data.tags["mtc.tune.status"]
        assert (status, child.info.status) in {("finished", "FINISHED"), ("stopped", "KILLED")}, (status, child)
        assert tags["mtc.tune.trial"] in result.output  # the terminal shows every trial
        assert child.data.params["loss.strategy"] == tags.get("mtc.tune.point.strategy", "fixed")
        assert child.data.metrics["tune/objective"] > 0
        assert all(f"val/{t}/mae" in child.data.metrics for t in TASKS)  # metrics per task, per epoch

    joint, apart = "+".join(TASKS), " | ".join(TASKS)
    assert {c.data.tags["mtc.tune.grouping"] for c in trials} == {joint, apart}  # each grouping is tried first
    # the new round kept to the one trial at a time the cluster holds: each trial started after the last one's epochs
    spans = sorted((c.info.start_time, last_logged(c.info.run_id, f"val/{TASKS[0]}/mae")) for c in trials)
    assert all(start >= previous_end for (_, previous_end), (start, _) in pairwise(spans)), spans

    assert artifacts(parent.info.run_id) >= {
        "tune/space.yaml",
        "report/trials.csv",
        "report/best_config.yaml",
        "report/affinity.csv",
        "report/affinity.png",
    }
    folder = download(parent.info.run_id, "report", tmp_path)
    ranked = pd.read_csv(folder / "trials.csv", dtype={"trial": str, "run_id": str})
    assert list(ranked["rank"]) == list(range(1, TRIALS + 1))
    finished = ranked[ranked["status"] == "finished"]
    assert not finished.empty and finished["objective"].is_monotonic_increasing
    for t in TASKS:  # relative error = validation error / the task's reference
        assert (ranked[f"{t} rel"] - ranked[f"{t} val error"] / references[t]).abs().max() < 1e-9
    assert (ranked["objective"] - ranked[[f"{t} rel" for t in TASKS]].mean(axis=1)).abs().max() < 1e-9
    affinity = pd.read_csv(folder / "affinity.csv")
    assert set(affinity["task"]) <= set(TASKS) and (affinity["best_relative_error"] > 0).all()
    assert set(affinity[affinity["group"] == joint]["task"]) == set(TASKS)  # the first trial is never cut
    assert (folder / "affinity.png").read_bytes().startswith(b"\x89PNG")

    # best_config.yaml is the config the best trial trained with, ready for `mtc train --config` (which other
    # tests run end to end): checked here without a sixth training
    best = finished.iloc[0]
    (tmp_path / "best").mkdir()
    trial_config = download(best["run_id"], "config.yaml", tmp_path / "best")
    exclude = {"run_name"}
    assert load_config(TrainConfig, folder / "best_config.yaml").model_dump(exclude=exclude) == load_config(
        TrainConfig, trial_config
    ).model_dump(exclude=exclude)

    started = time.perf_counter()
    resumed = runner.invoke(app, ["tune", "--resume", NAME])
    assert resumed.exit_code == 0, resumed.output
    assert len(child_runs(parent.info.run_id)) == TRIALS + len(TASKS)  # nothing ran again
    assert parent_run("tune", NAME).info.status == "FINISHED"
    print(
        f"budget 0 (references only) {budget_seconds:.0f} s, the trials on resume {tune_seconds:.0f} s, "
        f"resume of a finished tune {time.perf_counter() - started:.0f} s"
    )

    again = runner.invoke(app, ["tune", "--data", str(demo_shards), "--space", SPACE, "--name", NAME])
    assert again.exit_code == 2 and f"continue it with --resume {NAME}" in again.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus-per-trial", "1"], "--gpus-per-trial 1 asks for 1 GPU workers, but the Ray cluster has no GPU"),
        (["--workers-per-trial", "4"], "need 3.01 CPUs; the Ray cluster has 2. Lower --workers-per-trial"),
    ],
)
def test_impossible_trials_fail_fast_naming_the_shortfall(demo_shards, ray_session, flags, message):
    started = time.perf_counter()
    result = runner.invoke(app, ["tune", "--data", str(demo_shards), "--space", SPACE, *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert time.perf_counter() - started < 30


def test_placement_group_of_a_dead_train_controller_is_released(ray_session):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from mtc.cluster import release_orphan_placement_groups

    orphan = orphan_placement_group(0.25)  # as a Ray Train controller that Tune killed with its trial leaves it
    kept = placement_group([{"CPU": 0.25}])  # this driver's own: never touched
    ray.get(kept.ready())
    assert release_orphan_placement_groups() >= 1  # the helper waited until the GCS recorded the controller dead
    assert placement_group_table(orphan)["state"] == "REMOVED"
    assert placement_group_table(kept)["state"] == "CREATED"
    ray.util.remove_placement_group(kept)
