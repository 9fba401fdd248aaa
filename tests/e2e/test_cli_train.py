"""``mtc train`` through the CLI on real mp36k crystals with 2 CPU workers, Ray and MLflow for real."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mtc import tracking
from mtc_cli.app import app
from tests.conftest import checkpoint_registered

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
TINY = "configs/tiny.yaml"


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking.tracking_uri())


def latest_run():
    runs = client().search_runs([tracking.experiment_id("mtc")], order_by=["attributes.start_time DESC"])
    return runs[0]


def artifacts(run_id: str, path: str = "") -> set[str]:
    found = set()
    for a in client().list_artifacts(run_id, path):
        found |= artifacts(run_id, a.path) if a.is_dir else {a.path}
    return found


def test_two_workers_learn_and_log_everything(demo_shards, ray_session):
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(demo_shards),
            "-c",
            TINY,
            "--workers",
            "2",
            "--set",
            "epochs=4",
            "--set",
            "optim.lr=0.005",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "test metrics" in result.output and "mtc ui" in result.output
    run = latest_run()
    assert run.info.status == "FINISHED" and run.info.run_id in result.output
    metrics = run.data.metrics
    # test MAE beats the train-mean predictor on every regression task
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=tracking.tracking_uri())
    normalizer = json.loads((Path(folder) / "dataset/normalizer.json").read_text())
    test = pq.read_table(Path(folder) / "predictions/test_predictions.parquet")
    for task in ("formation_energy_per_atom", "band_gap"):
        truth = np.array(test.column(f"{task}_true").drop_null().to_pylist())
        train_mean = normalizer["mean"][normalizer["tasks"].index(task)]
        baseline_mae = float(np.abs(truth - train_mean).mean())
        assert metrics[f"test/{task}/mae"] < 0.9 * baseline_mae, (task, baseline_mae)
    assert metrics["test/is_metal/auc"] > 0.75
    assert 0 <= metrics["test/is_metal/ece"] <= 1 and 0 <= metrics["test/is_metal/brier"] <= 1
    losses = [m.value for m in client().get_metric_history(run.info.run_id, "train_loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert artifacts(run.info.run_id) >= {
        "config.yaml",
        "dataset/manifest.json",
        "dataset/normalizer.json",
        "model/model.pt",
        "model/model.json",
        "plots/learning_curves.png",
        "plots/parity_formation_energy_per_atom.png",
        "plots/parity_band_gap.png",
        "plots/reliability_is_metal.png",
        "predictions/test_predictions.parquet",
    }
    assert run.data.params["scaling.workers"] == "2" and run.data.params["optim.lr"] == "0.005"


def _kill_a_worker_after_first_checkpoint(stop: threading.Event, killed: list[int]) -> None:
    """Once the first checkpoint is registered, SIGKILL a training worker of this test run's own Ray."""
    storage = tracking.mtc_home() / "ray_results"
    while not stop.is_set():
        if checkpoint_registered(storage):
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        proc.kill()
                        killed.append(proc.pid)
                        return
        time.sleep(0.2)


def test_killed_worker_is_replaced_and_training_resumes(demo_shards, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_HOME", str(tmp_path))  # a fresh checkpoint folder to watch
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(stop, killed), daemon=True)
    killer.start()
    try:
        result = runner.invoke(
            app, ["train", "--data", str(demo_shards), "-c", TINY, "--workers", "2", "--set", "epochs=3"]
        )
    finally:
        stop.set()
    assert killed, "no training worker was found to kill"
    assert result.exit_code == 0, result.output
    run = latest_run()
    resumed = client().get_metric_history(run.info.run_id, "resumed_from_epoch")
    assert resumed and resumed[0].value >= 1
    assert np.isfinite(run.data.metrics["test/formation_energy_per_atom/mae"])


def test_gpus_on_a_cpu_machine_fail_fast(demo_shards, ray_session):
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--data", str(demo_shards), "-c", TINY, "--gpus", "2"])
    assert result.exit_code == 2
    assert "--gpus 2 asks for 2 GPU workers, but the Ray cluster has no GPU" in result.output
    assert time.perf_counter() - started < 30


def test_bad_config_is_a_message(demo_shards, ray_session):
    result = runner.invoke(app, ["train", "--data", str(demo_shards), "-c", TINY, "--set", "optim.lr=-1"])
    assert result.exit_code == 2 and "optim.lr" in result.output and "Traceback" not in result.output


RESUME_EPOCHS = 10  # enough that a kill as soon as the first checkpoint is registered lands mid-training
EPOCH_LINE = (
    r"epoch {epoch}/{total}: train loss [\d.]+, val MAE fepa [\d.]+ bg [\d.]+, AUC im [\d.]+, lr [\d.e-]+, "
    r"[\d,]+ crystals/s(, ETA \w+)?"
)


def test_interrupted_run_resumes_with_its_own_config(demo_shards, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_HOME", str(tmp_path))
    command = [
        sys.executable,
        "-m",
        "mtc_cli",
        "train",
        "--data",
        str(demo_shards),
        "-c",
        TINY,
        "--set",
        f"epochs={RESUME_EPOCHS}",
        "--set",
        "split.train_fraction=0.25",  # cheap epochs, not few: the resume must find epochs left to run
        "--set",
        "experiment=resume-test",
    ]
    proc = subprocess.Popen(  # stdout is a pipe, as in a log: plain progress lines
        command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(line.decode() for line in proc.stdout), daemon=True).start()
    deadline = time.time() + 300  # kill once the first checkpoint is registered and its epoch line printed
    while time.time() < deadline and not (
        checkpoint_registered(tmp_path / "ray_results") and any(x.startswith("epoch") for x in log)
    ):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = client().search_runs([tracking.experiment_id("resume-test")])[0]
    assert interrupted.info.status == "RUNNING"
    assert "tasks: fepa = formation_energy_per_atom (eV/atom), bg = band_gap (eV), im = is_metal\n" in log, log
    assert re.fullmatch(
        EPOCH_LINE.format(epoch=1, total=RESUME_EPOCHS), next(x for x in log if x.startswith("epoch")).strip()
    ), log

    result = runner.invoke(
        app, ["train", "--data", str(demo_shards), "--resume", interrupted.info.run_id], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert epochs, result.output  # the kill landed mid-training, so epochs are left to run
    first = int(epochs[0].split()[1].split("/")[0])
    assert first >= 2 and len(epochs) == RESUME_EPOCHS + 1 - first, result.output  # one line per epoch left
    for epoch, line in enumerate(epochs, first):
        assert re.fullmatch(EPOCH_LINE.format(epoch=epoch, total=RESUME_EPOCHS), line), line
    assert "…" not in result.output and "fepa = formation_energy_per_atom" in result.output  # 80 columns
    run = client().get_run(interrupted.info.run_id)
    assert run.info.status == "FINISHED" and "test/band_gap/mae" in run.data.metrics
    assert client().get_metric_history(run.info.run_id, "resumed_from_epoch")[0].value >= 1
    assert len(client().get_metric_history(run.info.run_id, "train_loss")) >= RESUME_EPOCHS
    again = runner.invoke(app, ["train", "--data", str(demo_shards), "--resume", run.info.run_id])
    assert again.exit_code == 2 and "nothing to continue" in again.output

    # #10.6: a run whose training finished but whose last steps failed resumes from its final checkpoint
    client().set_terminated(run.info.run_id, status="FAILED")
    losses = len(client().get_metric_history(run.info.run_id, "train_loss"))
    finish = runner.invoke(app, ["train", "--data", str(demo_shards), "--resume", run.info.run_id])
    assert finish.exit_code == 0, finish.output
    assert client().get_run(run.info.run_id).info.status == "FINISHED"
    assert len(client().get_metric_history(run.info.run_id, "train_loss")) == losses  # no epoch trained again
