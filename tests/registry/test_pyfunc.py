"""A trained model through the MLflow registry: the pyfunc round trip, aliases, no pickled weights."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from pymatgen.core import Structure

from mtc import tracking
from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.model.bundle import ModelBundle
from mtc.registry.models import ModelNotFound, describe_version, list_versions, load_predictor, promote

pytestmark = pytest.mark.ray


def test_registered_model_predicts_like_the_in_memory_model(trained, demo_records):
    records = demo_records[2000:2030]
    model = trained.bundle.build()
    graphs = featurize_table(
        pa.Table.from_pylist([{"id": r["id"], "source": "", "json": json.dumps(r)} for r in records]),
        FeaturizeConfig(**trained.bundle.graph_params),
        [],
    )
    with torch.inference_mode():
        expected = model.to_physical(model(collate_arrow(graphs)), trained.bundle.mean, trained.bundle.std).numpy()

    version = trained.registered["version"]
    promote("mtc-test", version, "champion")
    loaded = mlflow.pyfunc.load_model("models:/mtc-test@champion")
    frame = pd.DataFrame(
        {
            "id": [r["id"] for r in records],
            "cif": [Structure(r["lattice"], r["species"], r["frac_coords"]).to(fmt="cif") for r in records],
        }
    )
    out = loaded.predict(frame)
    assert list(out["id"]) == frame["id"].tolist() and out["error"].isna().all()
    np.testing.assert_allclose(out["formation_energy_per_atom"], expected[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["band_gap"], expected[:, 1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["is_metal_probability"], expected[:, 2], rtol=1e-4, atol=1e-4)
    assert set(out["is_metal"]) <= {0, 1}


def test_bad_rows_get_an_error_not_an_exception(trained):
    predictor = load_predictor(f"models:/mtc-test/{trained.registered['version']}")
    loaded = mlflow.pyfunc.load_model(f"models:/mtc-test/{trained.registered['version']}")
    out = loaded.predict(pd.DataFrame({"id": ["junk"], "cif": ["not a cif"]}))
    assert out.loc[0, "error"].startswith("unparseable_cif")
    assert predictor.output_names() == ["formation_energy_per_atom", "band_gap", "is_metal", "is_metal_probability"]


def test_weights_are_a_state_dict_not_a_pickled_module(trained, tmp_path):
    path = mlflow.artifacts.download_artifacts(
        f"models:/mtc-test/{trained.registered['version']}", dst_path=str(tmp_path)
    )
    weights = next(Path(path).rglob("model.pt"))
    state = torch.load(weights, weights_only=True)  # would fail on a pickled nn.Module
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    with zipfile.ZipFile(weights) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"MultiTaskCGCNN" not in pickled
    assert ModelBundle.load(weights.parent).task_names == ["formation_energy_per_atom", "band_gap", "is_metal"]
    assert not list(Path(path).rglob("python_model.pkl"))


def test_versions_aliases_and_mistakes(trained):
    rows = list_versions("mtc-test")
    assert rows[0]["version"] == trained.registered["version"]
    promote("mtc-test", trained.registered["version"], "staging-check")
    info = describe_version("mtc-test", "staging-check")
    assert info["run_id"] == trained.run_id and "test/band_gap/mae" in info["metrics"]
    with pytest.raises(ModelNotFound, match="no version 999"):
        promote("mtc-test", "999")
    with pytest.raises(ModelNotFound, match="no registered model named 'nope'"):
        list_versions("nope")
    assert tracking.tracking_uri().startswith("sqlite:")


def test_models_cli(trained):
    from typer.testing import CliRunner

    from mtc_cli.app import app

    runner = CliRunner()
    version = trained.registered["version"]
    promoted = runner.invoke(app, ["models", "promote", "mtc-test", version, "--alias", "cli-check"])
    assert promoted.exit_code == 0 and f"models:/mtc-test@cli-check -> version {version}" in promoted.output
    listed = runner.invoke(app, ["models", "list", "mtc-test"])
    assert listed.exit_code == 0 and "mtc-test" in listed.output and trained.run_id[:8] in listed.output
    shown = runner.invoke(app, ["models", "show", "mtc-test", "cli-check"])
    assert shown.exit_code == 0 and "bg = band_gap" in shown.output and "cli-check" in shown.output
    missing = runner.invoke(app, ["models", "promote", "mtc-test", "999"])
    assert missing.exit_code == 2 and "no version 999" in missing.output


def test_rest_model_keeps_row_order_with_repeated_missing_and_bad_ids(trained, demo_records):
    """#10.11: ids are data, not keys: every input row gets its own output row, in order."""
    loaded = mlflow.pyfunc.load_model(f"models:/mtc-test/{trained.registered['version']}")
    good = [Structure(r["lattice"], r["species"], r["frac_coords"]).to(fmt="cif") for r in demo_records[2100:2103]]
    frame = pd.DataFrame({"id": ["a", "a", None, "b"], "cif": [good[0], good[1], good[2], "not a cif"]})
    out = loaded.predict(frame)
    assert len(out) == 4 and list(out["id"].iloc[[0, 1, 3]]) == ["a", "a", "b"]
    first, second = out["band_gap"].iloc[0], out["band_gap"].iloc[1]
    assert np.isfinite(first) and np.isfinite(second) and first != second  # two crystals, two predictions
    assert out["error"].iloc[2].startswith("missing_id") and out["error"].iloc[3].startswith("unparseable_cif")
    assert out["error"].iloc[:2].isna().all() and np.isnan(out["band_gap"].iloc[3])


def test_mtc_loads_weights_without_running_the_models_code(trained, tmp_path):
    """#10.15: the code stored with a logged model never runs when mtc loads it (only its weights and JSON)."""
    from mtc.registry.models import bundle_in, download

    folder = download(f"models:/mtc-test/{trained.registered['version']}", tmp_path / "model")
    marker = tmp_path / "code-ran"
    for init in folder.rglob("mtc/__init__.py"):  # the package copy logged with the model (models-from-code)
        init.write_text(f"open({str(marker)!r}, 'w').close()\n")
    bundle = bundle_in(folder)
    assert bundle.task_names == trained.bundle.task_names and not marker.exists()


def test_bundle_format_version_is_checked(trained, tmp_path):
    from mtc.model.bundle import BundleError

    folder = trained.bundle.save(tmp_path / "bundle")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format_version"] == 1
    (folder / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BundleError, match="upgrade mtc"):
        ModelBundle.load(folder)
    (folder / "model.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(BundleError, match="retrain the model"):
        ModelBundle.load(folder)
    # a bundle of mtc 0.1 (format 1, before the field existed) still loads: models registered then keep working
    (folder / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "format_version"}))
    assert ModelBundle.load(folder).task_names == trained.bundle.task_names
