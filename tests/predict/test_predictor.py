"""What a model serves: auxiliary tasks are trained but have no prediction column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mtc.data.batching import collate_arrow
from mtc.model.bundle import ModelBundle
from mtc.model.multitask import MultiTaskCGCNN
from mtc.predict.predictor import EmbeddingError, StructurePredictor
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


def test_embed_gives_the_pooled_vectors_the_heads_read() -> None:
    """#14: every group's vector, concatenated in group order, or the one vector a task's head reads."""
    torch.manual_seed(0)
    groups = [["volume_per_atom", "band_gap"], ["is_metal"]]
    model = MultiTaskCGCNN(TASKS, atom_fea_len=8, h_fea_len=8, n_conv=2, shared_convs=1, groups=groups).eval()
    graph_params = {"radius": 8.0, "max_neighbors": 12}
    predictor = StructurePredictor(ModelBundle.from_model(model, [0.0] * 3, [1.0] * 3, graph_params))
    rows = demo_rows(5)
    structures = [Structure(r["lattice"], r["species"], r["frac_coords"]) for r in rows]
    with torch.no_grad():
        expected = [f.numpy() for f in model.group_features(collate_arrow(graph_table(rows)))]
    got = predictor.embed(structures)
    assert got.shape == (5, 16) and got.dtype == np.float32 and predictor.embedding_dim() == 16
    np.testing.assert_allclose(got, np.concatenate(expected, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predictor.embed(structures, task="is_metal"), expected[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(EmbeddingError, match="no task 'gap'"):
        predictor.embed(structures, task="gap")
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0.01]])
    with pytest.raises(EmbeddingError, match="structure 1 cannot be embedded: overlapping_atoms"):
        predictor.embed([structures[0], overlapping])
