"""``mtc train --ensemble 2 --bootstrap`` -> one registered version -> ``mtc screen`` / ``mtc predict`` / pyfunc
with calibrated ``<task>_std`` / ``_lo`` / ``_hi``, on real crystals with Ray and MLflow for real."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from mtc import tracking
from mtc_cli.app import app
from tests.e2e.runs import artifacts, child_runs, client, download

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
TASKS = ("formation_energy_per_atom", "band_gap")


def test_an_ensemble_trains_as_one_model_and_screens_with_intervals(demo_shards, demo_records, ray_session, tmp_path):
    trained = runner.invoke(
        app,
        [
            *["train", "--data", str(demo_shards), "-c", "configs/tiny.yaml", "--set", "epochs=1"],
            *["--set", "run_name=ens-e2e", "--ensemble", "2", "--bootstrap", "--register", "mtc-ens"],
        ],
        env={"COLUMNS": "100"},
    )
    assert trained.exit_code == 0, trained.output
    assert "member 2/2" in trained.output and "test calibration" in trained.output

    parents = client().search_runs([tracking.experiment_id("mtc")], "tags.`mtc.ensemble.members` = '2'")
    assert len(parents) == 1
    parent = parents[0]
    members = child_runs(parent.info.run_id)
    assert sorted(m.data.params["seed"] for m in members) == ["0", "1"]
    assert sorted(m.data.params["split.bootstrap"] for m in members) == ["0", "1"]
    metrics = parent.data.metrics
    for task in TASKS:
        for split in ("val", "test"):  # conformal on val: the 90 % interval holds on unseen test crystals too
            assert 0.8 <= metrics[f"{split}/{task}/coverage_90"] <= 0.98, (split, task)
        assert metrics[f"test/{task}/coverage_68"] < metrics[f"test/{task}/coverage_95"]
        assert math.isfinite(metrics[f"test/{task}/spread_spearman"]) and f"test/{task}/member_mae" in metrics
    for split in ("val", "test"):  # is_metal: the members' mean probability, its spread and its reliability
        assert 0 <= metrics[f"{split}/is_metal/ece"] <= 1 and metrics[f"{split}/is_metal/probability_std"] > 0
        assert metrics[f"{split}/is_metal/brier"] <= metrics[f"{split}/is_metal/member_brier"]
    assert artifacts(parent.info.run_id) >= {
        *(f"plots/{kind}_{task}.png" for task in TASKS for kind in ("calibration", "error_vs_spread")),
        "plots/reliability_is_metal.png",
        "predictions/test_predictions.parquet",
        "model/model.pt",
        "model/model.json",
    }
    bundle_meta = json.loads((download(parent.info.run_id, "model", tmp_path) / "model.json").read_text())
    assert bundle_meta["n_members"] == 2 and set(bundle_meta["calibration"]["quantiles"]) == set(TASKS)
    versions = client().search_model_versions("name='mtc-ens'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", parent.info.run_id)]  # one version for the ensemble

    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords")} for r in demo_records[2000:2300]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "db.parquet")
    out = tmp_path / "screened"
    screened = runner.invoke(
        app,
        [
            *["screen", str(tmp_path / "db.parquet"), "--out", str(out), "--model", "models:/mtc-ens/1"],
            *["--where", "band_gap_lo > 0.2", "--sort", "formation_energy_per_atom_hi", "--top", "10"],
        ],
    )
    assert screened.exit_code == 0, screened.output
    predictions = pq.read_table(out / "predictions")
    assert predictions.num_rows == 300
    for task in TASKS:
        value, std, lo, hi = (predictions.column(f"{task}{s}").to_numpy() for s in ("", "_std", "_lo", "_hi"))
        assert (std > 0).all() and (lo < value).all() and (value < hi).all()
        assert np.all(hi - lo > 2 * std)  # a 90 % interval is wider than mean ± one std
    flags = [f for f in predictions.column("ood").to_pylist() if f is not None]
    assert len(flags) < predictions.num_rows / 2  # most crystals look like the training ones
    assert all("not in training" in f or "atoms >" in f or "spread above" in f for f in flags)
    selected = pq.read_table(out / "selected.parquet")
    assert 0 < selected.num_rows <= 10 and pa.compute.min(selected.column("band_gap_lo")).as_py() > 0.2
    ranked = selected.column("formation_energy_per_atom_hi").to_pylist()
    assert ranked == sorted(ranked)

    cif = tmp_path / "one.cif"
    r = demo_records[2000]
    Structure(r["lattice"], r["species"], r["frac_coords"]).to(filename=str(cif))
    predicted = runner.invoke(app, ["predict", str(cif), "--model", "models:/mtc-ens/1"], env={"COLUMNS": "120"})
    assert predicted.exit_code == 0, predicted.output
    assert "±" in predicted.output

    served = mlflow.pyfunc.load_model("models:/mtc-ens/1")
    frame = served.predict(pd.DataFrame({"id": ["one"], "cif": [cif.read_text()]}), params={"interval": 0.5})
    first = predictions.filter(pa.compute.equal(predictions.column("id"), r["id"])).to_pylist()[0]
    assert frame["band_gap_hi"][0] - frame["band_gap_lo"][0] < first["band_gap_hi"] - first["band_gap_lo"]
