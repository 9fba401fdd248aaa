"""A real MLflow server on PostgreSQL (loopback), with two training runs logging to it at the same time.

PostgreSQL comes from the system packages (Debian: `apt-get install -y postgresql`; its binaries live in
/usr/lib/postgresql/<version>/bin) and the psycopg driver from the dev extra. The test skips, saying why, when
either is missing; a server that does not start fails the test with its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.infra.test_multinode import _free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120
EXPERIMENT = "pg-concurrent"


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _wait(check, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    pytest.fail(f"{what} was not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture(scope="module")
def mlflow_server():
    """PostgreSQL (trust auth, loopback only) and `mlflow server` on it; yields (tracking URI, artifacts folder)."""
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (pip install 'psycopg[binary]') is SQLAlchemy's PostgreSQL driver")
    root = Path(tempfile.mkdtemp(prefix="mtc-pg-"))
    as_postgres = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    pg_port, mlflow_port = _free_ports(2)
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(
            [
                *as_postgres,
                str(pg_bin / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        pg_log = root / "postgres.log"
        procs.append(
            subprocess.Popen(
                [
                    *as_postgres,
                    str(pg_bin / "postgres"),
                    "-D",
                    str(root / "data"),
                    "-p",
                    str(pg_port),
                    "-k",
                    str(root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ],
                stdout=pg_log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        psql = [str(pg_bin / "psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        _wait(
            lambda: subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0,
            "PostgreSQL",
            procs[-1],
            pg_log,
        )
        subprocess.run([*psql, "-c", "CREATE DATABASE mlflow"], check=True, capture_output=True)

        artifacts = root / "mlartifacts"
        uri = f"http://127.0.0.1:{mlflow_port}"
        server_log = root / "mlflow.log"
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"postgresql://postgres@127.0.0.1:{pg_port}/mlflow",
                    "--artifacts-destination",
                    str(artifacts),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                ],  # one process: uvicorn's supervisor kills busy workers on a loaded 2-core box
                stdout=server_log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        _wait(
            lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200,
            "mlflow server",
            procs[-1],
            server_log,
        )
        yield uri, artifacts
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _train(shards: str, name: str) -> str:
    """One training run inside a Ray task (as a Tune trial runs); MLFLOW_TRACKING_URI comes from its runtime_env."""
    from mtc.config import TrainConfig, load_config
    from mtc.train.trainer import train

    config = load_config(
        TrainConfig, REPO / "configs/tiny.yaml", ["epochs=1", f"experiment={EXPERIMENT}", f"run_name={name}"]
    )
    return train(Path(shards), config, register="mtc-pg").run_id


def test_two_concurrent_runs_log_once_each_to_a_postgres_backed_server(mlflow_server, demo_shards, ray_session):
    import mlflow

    uri, artifacts = mlflow_server
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)  # as `mtc tune` does before its trials start
    task = ray_session.remote(num_cpus=0.01, max_retries=0)(_train).options(
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}}
    )
    run_ids = ray_session.get([task.remote(str(demo_shards), f"run-{k}") for k in range(2)], timeout=600)

    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids) and len(set(run_ids)) == 2
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert any(k.startswith("test/") for k in run.data.metrics), sorted(run.data.metrics)
        assert "model" in {a.path for a in client.list_artifacts(run.info.run_id)}
    versions = client.search_model_versions("name='mtc-pg'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert sorted(v.run_id for v in versions) == sorted(run_ids)
    assert list(artifacts.rglob("model.pt")), "artifacts went through the server into --artifacts-destination"
