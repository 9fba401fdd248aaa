"""``mtc screen`` / ``mtc predict`` / ``mlflow models serve`` / ``mtc ui`` on real structures and a real registry."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from mtc import tracking
from mtc.registry.models import promote
from mtc_cli.app import app
from tests.e2e.browser import ARTIFACTS, render

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
N_GOOD = 2000


@pytest.fixture(scope="module")
def database(tmp_path_factory, demo_records) -> Path:
    """2,000 real crystals (other than the training ones) plus 3 bad rows, in two Parquet files."""
    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords")} for r in demo_records[2000 : 2000 + N_GOOD]]
    rows += [
        {
            "id": "bad-overlap",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Na", "Cl"],
            "frac_coords": [[0, 0, 0], [0, 0, 0]],
        },
        {
            "id": "bad-element",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Xx"],
            "frac_coords": [[0, 0, 0]],
        },
        {
            "id": "bad-lattice",
            "lattice": [[1, 0, 0], [2, 0, 0], [0, 0, 1]],
            "species": ["Na"],
            "frac_coords": [[0, 0, 0]],
        },
    ]
    folder = tmp_path_factory.mktemp("db")
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.slice(0, 1200), folder / "a.parquet", row_group_size=700)
    pq.write_table(table.slice(1200), folder / "b.parquet")
    return folder


@pytest.fixture(scope="module")
def champion(trained):
    promote("mtc-test", trained.registered["version"], "champion")
    return "models:/mtc-test@champion"


def read_predictions(out: Path) -> pa.Table:
    return pq.read_table(out / "predictions").sort_by("id")


def test_screen_accounts_for_every_row(database, champion, tmp_path, ray_session):
    out = tmp_path / "screen"
    result = runner.invoke(
        app,
        [
            "screen",
            str(database),
            "--model",
            champion,
            "--out",
            str(out),
            "--where",
            "band_gap > 0.5 and formation_energy_per_atom < 0",
            "--sort",
            "formation_energy_per_atom",
            "--top",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    predictions = read_predictions(out)
    rejected = pq.read_table(out / "rejected")
    assert predictions.num_rows == N_GOOD and len(set(predictions.column("id").to_pylist())) == N_GOOD
    assert dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True)) == {
        "bad-overlap": "overlapping_atoms",
        "bad-element": "unknown_element",
        "bad-lattice": "singular_lattice",
    }
    assert predictions.column_names == [
        "id",
        "formation_energy_per_atom",
        "band_gap",
        "is_metal",
        "is_metal_probability",
    ]
    selected = pq.read_table(out / "selected.parquet").to_pylist()
    assert len(selected) == 5 and all(r["band_gap"] > 0.5 and r["formation_energy_per_atom"] < 0 for r in selected)
    energies = [r["formation_energy_per_atom"] for r in selected]
    assert energies == sorted(energies)
    assert "2,000 scored" in result.output and "3 rejected" in result.output


def test_killed_screen_resumes_to_the_same_output(database, champion, tmp_path, ray_session):
    reference = tmp_path / "reference"
    assert runner.invoke(app, ["screen", str(database), "--model", champion, "--out", str(reference)]).exit_code == 0

    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtc_cli",
            "screen",
            str(database),
            "--model",
            champion,
            "--out",
            str(out),
            "--workers",
            "1",
            "--engine",
            "ray",  # 2,003 rows: auto would score them in this process
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.log").open("w"),
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "predictions").glob("part-*.parquet"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "predictions").glob("part-*.parquet")))
    assert done >= 1, "the screen was killed before it wrote a part"
    # #10.14: Ray's note on restartable actors with constructor arguments is nothing a user can act on
    assert "constructor arguments in the object store" not in (tmp_path / "stderr.log").read_text()

    result = runner.invoke(app, ["screen", str(database), "--model", champion, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    assert read_predictions(out).equals(read_predictions(reference))
    assert pq.read_table(out / "rejected").num_rows == 3


def test_other_model_into_same_folder_is_refused(database, champion, trained, tmp_path, ray_session):
    out = tmp_path / "s"
    assert runner.invoke(app, ["screen", str(database), "--model", champion, "--out", str(out)]).exit_code == 0
    other = runner.invoke(app, ["screen", str(database), "--model", f"runs:/{trained.run_id}/x", "--out", str(out)])
    assert other.exit_code == 2 and "the model changed" in other.output


def test_predict_files(champion, demo_records, tmp_path):
    paths = []
    for r in demo_records[:2]:
        path = tmp_path / f"{r['id']}.cif"
        Structure(r["lattice"], r["species"], r["frac_coords"]).to(filename=str(path))
        paths.append(str(path))
    (tmp_path / "junk.cif").write_text("nothing here")
    result = runner.invoke(
        app,
        ["predict", *paths, str(tmp_path / "junk.cif"), "--model", champion, "--out", str(tmp_path / "p.csv")],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert demo_records[0]["id"] in result.output and "junk.cif" in result.output
    assert (tmp_path / "p.csv").read_text().count("\n") == 3
    both = runner.invoke(app, ["predict", *paths, "--batch-atoms", "512", "--batch-size", "8"])
    assert both.exit_code == 2 and "not both" in both.output, both.output
    shown = runner.invoke(app, ["models", "show", "mtc-test", "champion"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    for output in (result.output, shown.output):  # 80 columns: short names with a legend, nothing cut
        assert "fepa = formation_energy_per_atom" in output and "…" not in output, output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_mlflow_models_serve_answers_a_posted_cif(champion, demo_records):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            champion,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "1",
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", 120)
        r = demo_records[5]
        cif = Structure(r["lattice"], r["species"], r["frac_coords"]).to(fmt="cif")
        body = json.dumps({"dataframe_records": [{"id": r["id"], "cif": cif}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        row = answer["predictions"][0]
        assert row["id"] == r["id"] and isinstance(row["band_gap"], float) and row["error"] is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_mtc_ui_serves_the_runs(trained):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtc_cli", "ui", "--port", str(port)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 240)  # 16 s quiet; over 90 s on a 2-core machine under load
        # generous read timeouts: the server's first requests import and open the store, minutes on a crowded machine
        html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=120).read()
        assert b"<html" in html.lower()
        body = json.dumps({"experiment_ids": [trained.experiment_id], "max_results": 50}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
        )
        runs = json.loads(urllib.request.urlopen(request, timeout=120).read())["runs"]
        assert trained.run_id in {r["info"]["run_id"] for r in runs}
        # what a user sees: the run's page in a real browser, its parity plot rendered from the artifact store
        plot = "plots/parity_formation_energy_per_atom.png"
        served = f"http://127.0.0.1:{port}/get-artifact?path={plot}&run_uuid={trained.run_id}"
        assert urllib.request.urlopen(served, timeout=120).read().startswith(b"\x89PNG")  # the route the page reads
        page = f"http://127.0.0.1:{port}/#/experiments/{trained.experiment_id}/runs/{trained.run_id}/artifacts/{plot}"
        rendered = f'<img alt="{plot}" src="blob:'
        dom = render(page, ARTIFACTS / "mtc-ui-run-page.png", until=rendered)
        assert f"<title>Run {trained.run_id} - MLflow</title>" in dom
        assert rendered in dom, "the parity plot was not rendered"
        tags = mlflow.MlflowClient(tracking.tracking_uri()).get_experiment(trained.experiment_id).tags
        assert tags.get(tracking.EXPERIMENT_KIND[0]) == tracking.EXPERIMENT_KIND[1]  # the UI's model-training views
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
