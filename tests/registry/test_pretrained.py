"""Model folders: export a registered model with its card, pull it back, and screen with the shipped model untrained."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mtc import tracking
from mtc.model.bundle import ModelBundle
from mtc.registry.models import describe_version, load_bundle
from mtc.registry.pretrained import CARD, CARD_MD, PretrainedError, export, model_folder, pull, shipped
from mtc_cli.app import app

pytestmark = [pytest.mark.ray]
runner = CliRunner()


def test_export_then_pull_registers_the_same_weights_once(trained, tmp_path):
    tracking.configure()
    source = f"models:/{trained.registered['name']}/{trained.registered['version']}"
    folder = export(source, tmp_path / "shared", "tiny-shared", description="a test model", data_note="demo slice")

    card = json.loads((folder / CARD).read_text())
    assert card["training"] == {"source": source, "run_id": trained.run_id, "minutes": card["training"]["minutes"]}
    assert card["metrics"]["test/band_gap/mae"] > 0 and card["split"]["train"] > card["split"]["test"] > 0
    assert card["graph_params"] == trained.bundle.graph_params and card["config"]["epochs"] == 1
    assert "| band_gap | eV |" in (folder / CARD_MD).read_text()

    first = pull(folder, name="tiny-pulled")
    again = pull(folder, name="tiny-pulled", alias="prod")
    assert first["new"] and not again["new"] and again["version"] == first["version"]
    shown = describe_version("tiny-pulled", "prod")
    assert shown["metrics"]["test/band_gap/mae"] == pytest.approx(card["metrics"]["test/band_gap/mae"])
    with pytest.raises(PretrainedError, match=r"holds no config\.yaml and dataset manifest"):
        export("models:/tiny-pulled@champion", tmp_path / "again", "again")
    pulled = load_bundle("models:/tiny-pulled@champion")
    for key, value in trained.bundle.state_dict.items():
        assert np.array_equal(pulled.state_dict[key].numpy(), value.numpy()), key


def test_a_folder_without_a_card_is_refused_by_name(trained, tmp_path):
    trained.bundle.save(tmp_path / "bare")
    with pytest.raises(PretrainedError, match=rf"{tmp_path / 'bare'} lacks card.json"):
        model_folder(tmp_path / "bare")
    with pytest.raises(PretrainedError, match="no model folder or shipped model 'nope'; shipped models: mp36k-mt3"):
        model_folder("nope")


def test_shipped_model_screens_on_a_fresh_store_with_no_training(demo_records, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("MTC_HOME", str(tmp_path / "fresh-home"))
    (card,) = [c for c in shipped() if c["name"] == "mp36k-mt3"]
    bundle = ModelBundle.load(model_folder("mp36k-mt3"))
    assert bundle.task_names == [t["name"] for t in card["tasks"]]

    listed = runner.invoke(app, ["models", "shipped"], env={"COLUMNS": "120"})
    assert listed.exit_code == 0 and "mp36k-mt3" in listed.output, listed.output
    pulled = runner.invoke(app, ["models", "pull", "mp36k-mt3"])
    assert pulled.exit_code == 0 and "models:/mp36k-mt3@champion" in pulled.output, pulled.output

    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords")} for r in demo_records[-300:]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "db.parquet")
    labels = {r["id"]: r["formation_energy_per_atom"] for r in demo_records[-300:]}
    out = tmp_path / "screen"
    result = runner.invoke(
        app, ["screen", str(tmp_path / "db.parquet"), "--model", "models:/mp36k-mt3@champion", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    predictions = pq.read_table(out / "predictions").to_pandas()
    assert sorted(predictions["id"]) == sorted(labels)
    error = np.abs(predictions["formation_energy_per_atom"] - predictions["id"].map(labels)).mean()
    # the demo slice overlaps mp36k's training split, so this is no test MAE: it only shows the weights are the model's
    assert error < 2 * card["metrics"]["test/formation_energy_per_atom/mae"], error
