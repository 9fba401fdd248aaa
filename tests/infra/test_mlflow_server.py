"""A real MLflow server on PostgreSQL (loopback): a tune's concurrent trials log to it, their models register there.

PostgreSQL comes from the system packages (Debian: `apt-get install -y postgresql`; its binaries live in
/usr/lib/postgresql/<version>/bin) and the psycopg driver from the dev extra. The test skips, saying why, when
either is missing; a server that does not start fails the test with its log.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.infra.ray_nodes import LocalRayCluster, free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


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
    pg_port, mlflow_port = free_ports(2)
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


def _publish(run_id: str) -> str:
    """Register the model a run logged, inside a Ray task; MLFLOW_TRACKING_URI comes from its runtime_env."""
    import mlflow

    from mtc import tracking
    from mtc.model.bundle import ModelBundle
    from mtc.registry.models import publish
    from mtc.train.loop import MODEL_DIR

    tracking.configure()
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{MODEL_DIR}", dst_path=folder)
        bundle = ModelBundle.load(Path(path))
    return publish(run_id, bundle, "mtc-pg")["version"]


def test_concurrent_trials_log_once_each_and_their_models_register_and_screen_through_the_server(
    mlflow_server, demo_shards, demo_records, ray_session, tmp_path
):
    """`mtc tune --max-concurrent 2` on a Ray node with 4 logical CPUs, logging to the PostgreSQL-backed server; the
    trials' models registered there at once, then promoted and screened by alias from other processes."""
    import mlflow
    import yaml

    uri, artifacts = mlflow_server
    space = yaml.safe_load((REPO / "configs/tune/tiny.yaml").read_text())
    space["references"] = {"formation_energy_per_atom": 0.25, "band_gap": 0.6}  # given: the trials alone run
    space["train"]["epochs"] = 1
    space["trials"] = 2  # two at once is what the server must survive; more trials only add minutes
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    root = Path(tempfile.mkdtemp(prefix="mtcpt-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = LocalRayCluster(root)
    try:
        cluster.start(head_cpus=4)  # two trials of 1 worker x 0.5 CPU + 1 CPU for Ray Data each
        args = ["tune", "--data", str(demo_shards), "--space", str(tmp_path / "space.yaml"), "--name", "pg-tune"]
        result = cluster.mtc(*args, "--max-concurrent", "2", timeout=600, env={"MLFLOW_TRACKING_URI": uri})
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 at a time" in result.stdout

    client = mlflow.MlflowClient(uri)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`mtc.tune.name` = 'pg-tune'"
    )
    parent = next(p for p in parents if p.data.tags.get("mtc.tune.kind") == "parent")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = sorted(c.data.tags["mtc.tune.trial"] for c in children)
    assert len(trials) == 2 and len(set(trials)) == 2, trials  # every trial once: none lost, none duplicated
    assert len({c.info.run_name for c in children}) == 2
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), "no two trials ran at once"
    for child in children:
        assert child.info.status in {"FINISHED", "KILLED"} and "tune/objective" in child.data.metrics
    trials_csv = client.download_artifacts(parent.info.run_id, "report/trials.csv", str(tmp_path))
    ranked = pd.read_csv(trials_csv, dtype={"trial": str, "run_id": str})  # an id like "6e126695" is no number
    assert sorted(ranked["trial"]) == trials and sorted(ranked["run_id"]) == sorted(c.info.run_id for c in children)

    finished = [c.info.run_id for c in children if c.info.status == "FINISHED"]  # a trial ASHA stopped has no model
    assert finished, [c.info.status for c in children]
    task = ray_session.remote(num_cpus=0.01, max_retries=0)(_publish).options(
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}}
    )
    registered = ray_session.get([task.remote(run_id) for run_id in finished], timeout=300)
    assert sorted(int(v) for v in registered) == list(range(1, len(finished) + 1))
    versions = client.search_model_versions("name='mtc-pg'")
    assert sorted(v.run_id for v in versions) == sorted(finished)
    assert list(artifacts.rglob("model.pt")), "artifacts went through the server into --artifacts-destination"

    # another process promotes the last version and screens by alias, through the server alone
    last = str(len(finished))
    db = tmp_path / "db.parquet"
    keep = ("id", "lattice", "species", "frac_coords")
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in keep} for r in demo_records[3000:3200]]), db)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MTC_HOME": str(tmp_path / "elsewhere")}
    for args in (
        ["models", "promote", "mtc-pg", last, "--alias", "champion"],
        ["screen", str(db), "--model", "models:/mtc-pg@champion", "--out", str(tmp_path / "screened")],
    ):
        done = subprocess.run([str(BIN / "mtc"), *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert client.get_model_version_by_alias("mtc-pg", "champion").version == last
    assert sorted(pq.read_table(tmp_path / "screened/predictions").column("id").to_pylist()) == sorted(
        r["id"] for r in demo_records[3000:3200]
    )
