"""Losing a worker node mid-train: Ray Train replaces its worker and the run resumes from the last checkpoint.

A head node (2 CPUs) and a worker node (1 CPU) on this machine (tests/infra/ray_nodes.py). `mtc train --workers 2
--set scaling.placement=spread` puts one DDP worker on each node; after the first checkpoint, every process of the
worker node is SIGKILLed, as a host that loses power. The remaining capacity (the head's 2 CPUs) holds both
workers and Ray Data, so the run must finish there, resuming from the checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, checkpoint_registered
from tests.infra.ray_nodes import LocalRayCluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

EXPERIMENT = "node-loss"


def _worker_in_session(sid: int) -> bool:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
            try:
                if os.getsid(proc.info["pid"]) == sid:
                    return True
            except OSError:
                continue
    return False


def _kill_node_after_first_checkpoint(
    cluster: LocalRayCluster, node: int, storage: Path, stop: threading.Event, killed: list[float]
) -> None:
    """Once a checkpoint is registered and a training worker runs on ``node``, kill that node."""
    sid = cluster.procs[node].pid
    while not stop.is_set():
        if checkpoint_registered(storage) and _worker_in_session(sid):
            cluster.kill_node(node)
            killed.append(time.monotonic())
            return
        time.sleep(0.2)


def test_training_survives_the_loss_of_a_worker_node(demo_shards, tmp_path):
    """DDP over gloo between two nodes, one worker on each, until the worker node dies; the run's test split is the
    single-node split, crystal for crystal."""
    import mlflow

    from mtc.config import TrainConfig, load_config
    from mtc.train.datasets import prepare_splits

    home = tmp_path / "home"  # a fresh checkpoint folder to watch
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"  # this run's own store, whatever the test process points at
    root = Path(tempfile.mkdtemp(prefix="mtcnl-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    overrides = ["epochs=4", f"experiment={EXPERIMENT}", "scaling.placement=spread", "scaling.max_failures=2"]
    expected = prepare_splits(demo_shards, load_config(TrainConfig, REPO / "configs/tiny.yaml", overrides)).counts
    cluster = LocalRayCluster(root)
    stop, killed = threading.Event(), []
    try:
        cluster.start(head_cpus=2)
        victim = cluster.add_node(1)
        killer = threading.Thread(
            target=_kill_node_after_first_checkpoint,
            args=(cluster, victim, home / "ray_results", stop, killed),
            daemon=True,
        )
        killer.start()
        args = ["train", "--data", str(demo_shards), "-c", str(REPO / "configs/tiny.yaml")]
        result = cluster.mtc(
            *args,
            "--workers",
            "2",
            *(a for o in overrides for a in ("--set", o)),
            "--register",
            "",
            timeout=600,
            env={"MTC_HOME": str(home), "MLFLOW_TRACKING_URI": uri},
        )
    finally:
        stop.set()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert killed, "no training worker ran on the worker node before the run ended"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_id in result.stdout
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_from_epoch")]
    assert resumed and 1 <= resumed[0] < 4, resumed
    history = sorted(client.get_metric_history(run.info.run_id, "nodes"), key=lambda m: (m.step, m.timestamp))
    nodes = [int(m.value) for m in history]
    assert nodes[0] == 2 and nodes[-1] == 1, nodes  # across both nodes, then on the head alone
    assert {m.value for m in client.get_metric_history(run.info.run_id, "workers")} == {2}  # the head took both
    assert run.data.metrics["test/formation_energy_per_atom/n"] == expected["test"]
    epochs = sorted({int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")})
    assert epochs[-1] == 4
