"""An ensemble bundle: saved and loaded as one (weights only), served as mean ± calibrated spread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtc.model.bundle import ModelBundle
from mtc.model.calibration import Calibration, fit_quantiles
from mtc.model.domain import Domain
from mtc.predict.predictor import StructurePredictor
from tests.model.conftest import demo_rows, graph_table
from tests.predict.test_predictor import TASKS, bundle


def member(seed: int) -> ModelBundle:
    from mtc.model.multitask import MultiTaskCGCNN

    torch.manual_seed(seed)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=8, h_fea_len=8, n_conv=1).eval()
    return ModelBundle.from_model(model, [1.0, 2.0, 0.0], [3.0, 1.5, 1.0], {"radius": 8.0, "max_neighbors": 12})


def ensemble(k: int = 3) -> ModelBundle:
    rng = np.random.default_rng(0)
    quantiles = fit_quantiles(rng.normal(size=300) * 2.0, np.ones(300))
    domain = Domain([8, 11, 17], 64, {"band_gap": 10.0})  # O, Na, Cl only
    calibration = Calibration({"band_gap": quantiles}).to_dict()
    return ModelBundle.ensemble([member(s) for s in range(k)], calibration, domain.to_dict())


def test_an_ensemble_bundle_round_trips_and_a_single_model_is_written_as_before(tmp_path) -> None:
    loaded = ModelBundle.load(ensemble().save(tmp_path / "ens"))
    assert loaded.n_members == 3 and loaded.calibration["quantiles"].keys() == {"band_gap"}
    assert loaded.domain == ensemble().domain
    for got, want in zip(loaded.members, ensemble().members, strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    single = bundle().save(tmp_path / "one")
    meta = json.loads((single / "model.json").read_text())
    assert meta["format_version"] == 1 and "n_members" not in meta
    assert torch.load(single / "model.pt", weights_only=True).keys() == bundle().state_dict.keys()
    assert ModelBundle.load(single).n_members == 1


def test_ensemble_predictions_are_the_members_mean_with_calibrated_bounds() -> None:
    graphs = graph_table(demo_rows(6))
    table = StructurePredictor(ensemble(), interval=0.9).predict_graphs(graphs)
    singles = [StructurePredictor(member(s)).predict_graphs(graphs) for s in range(3)]
    assert table.column_names == [
        *["id", "band_gap", "band_gap_std", "band_gap_lo", "band_gap_hi"],
        *["is_metal", "is_metal_probability", "is_metal_probability_std", "ood"],
    ]
    for row, flag in zip(demo_rows(6), table.column("ood").to_pylist(), strict=True):  # flagged iff not Na/Cl/O only
        assert (flag is not None) == bool(set(row["species"]) - {"O", "Na", "Cl"}), (row["species"], flag)
    values = np.stack([s.column("band_gap").to_numpy() for s in singles])
    np.testing.assert_allclose(table.column("band_gap").to_numpy(), values.mean(0), atol=1e-5)
    probability = np.stack([s.column("is_metal_probability").to_numpy() for s in singles])
    np.testing.assert_allclose(table.column("is_metal_probability_std").to_numpy(), probability.std(0), atol=1e-5)
    calibration = Calibration.from_dict(ensemble().calibration)
    lo, hi = table.column("band_gap_lo").to_numpy(), table.column("band_gap_hi").to_numpy()
    np.testing.assert_allclose(hi - lo, 2 * calibration.factor("band_gap", 0.9) * values.std(0), rtol=1e-4)
    np.testing.assert_allclose(
        table.column("band_gap_std").to_numpy(), calibration.std_factor("band_gap") * values.std(0), rtol=1e-4
    )
    wider = StructurePredictor(ensemble()).with_interval(0.95).predict_graphs(graphs)
    assert (wider.column("band_gap_hi").to_numpy() > hi).all()
    plain = StructurePredictor(ensemble(), frozen=False).predict_graphs(graphs)
    np.testing.assert_allclose(plain.column("band_gap_hi").to_numpy(), hi, atol=1e-4)


def test_a_bad_interval_is_refused_by_name() -> None:
    from mtc.errors import MtcError

    with pytest.raises(MtcError, match=r"--interval 1\.5"):
        StructurePredictor(ensemble(2), interval=1.5)
