"""``precision="bfloat16"``: the shipped mp36k model's predictions move by a small part of its test error."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.predict.predictor import StructurePredictor
from mtc.registry.pretrained import CARD, model_folder
from tests.model.conftest import demo_rows

KEYS = ("id", "lattice", "species", "frac_coords")


def test_bfloat16_predictions_of_a_trained_model_stay_within_a_tenth_of_its_test_error():
    folder = model_folder("mp36k-mt3")
    bundle, card = ModelBundle.load(folder), json.loads((folder / CARD).read_text())
    records = pa.Table.from_pylist([{k: r[k] for k in KEYS} for r in demo_rows(96)])
    exact, _ = StructurePredictor(bundle).predict_records(records)
    low, rejected = StructurePredictor(bundle, precision="bfloat16").predict_records(records)
    assert rejected.num_rows == 0 and low.schema == exact.schema and low["id"] == exact["id"]
    for task in bundle.task_names:
        moved = np.abs(low[task].to_numpy() - exact[task].to_numpy())
        mae = card["metrics"][f"test/{task}/mae"]
        assert 0 < moved.mean() <= 0.1 * mae and moved.max() <= mae, (task, moved.mean(), moved.max(), mae)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "float16"}, "--precision float16: choose one of float32, bfloat16"),
        ({"precision": "bfloat16", "frozen": False}, "needs the frozen forward"),
    ],
)
def test_an_unknown_or_unfrozen_precision_is_refused(options, message):
    with pytest.raises(MtcError, match=message):
        StructurePredictor(ModelBundle.load(model_folder("mp36k-mt3")), **options)
