"""What a model serves: auxiliary tasks are trained but have no prediction column."""

from __future__ import annotations

import numpy as np
import torch

from mtc.data.batching import collate_arrow
from mtc.model.bundle import ModelBundle
from mtc.model.multitask import MultiTaskCGCNN
from mtc.predict.predictor import StructurePredictor
from mtc.registry.models import _signature
from mtc.tasks import as_tasks
from tests.model.conftest import demo_rows, graph_table

TASKS = as_tasks(
    [
        {"name": "volume_per_atom", "column": "formation_energy_per_atom", "per_atom": True, "auxiliary": True},
        {"name": "band_gap"},
        {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
    ]
)


def bundle() -> ModelBundle:
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=8, h_fea_len=8, n_conv=1).eval()
    return ModelBundle.from_model(model, [1.0, 2.0, 0.0], [3.0, 1.5, 1.0], {"radius": 8.0, "max_neighbors": 12})


def test_predictions_and_the_signature_leave_auxiliary_tasks_out() -> None:
    predictor = StructurePredictor(bundle())
    assert predictor.output_names() == ["band_gap", "is_metal", "is_metal_probability"]
    graphs = graph_table(demo_rows(5))
    table = predictor.predict_graphs(graphs)
    with torch.no_grad():
        model = predictor.model
        expected = model.to_physical(model(collate_arrow(graphs)), predictor.bundle.mean, predictor.bundle.std)
    # the served columns are the model's outputs 1 and 2, not shifted onto the auxiliary output 0
    np.testing.assert_allclose(table.column("band_gap").to_numpy(), expected[:, 1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(table.column("is_metal_probability").to_numpy(), expected[:, 2].numpy(), rtol=1e-6)
    assert [c.name for c in _signature(predictor.bundle).outputs.inputs] == ["id", *predictor.output_names(), "error"]


def test_the_frozen_forward_serves_what_the_eval_model_serves() -> None:
    graphs = graph_table(demo_rows(8))
    frozen = StructurePredictor(bundle()).predict_graphs(graphs)
    plain = StructurePredictor(bundle(), frozen=False).predict_graphs(graphs)
    assert frozen.schema == plain.schema
    for name in ("band_gap", "is_metal_probability"):
        np.testing.assert_allclose(frozen.column(name).to_numpy(), plain.column(name).to_numpy(), atol=1e-5)
