"""The frozen inference model reproduces ``model.eval()`` in every sharing layout."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from torch import nn

from mtc.data.batching import collate_arrow
from mtc.model.cgcnn import EdgeIndex
from mtc.model.inference import InferenceModel, gate_
from mtc.model.multitask import MultiTaskCGCNN
from tests.model.test_cgcnn import TASKS, without_last_edge

LAYOUTS = {
    "trunk per group": {"shared_convs": None, "groups": [["band_gap", "is_metal"], ["formation_energy_per_atom"]]},
    "one shared trunk": {"shared_convs": None},
    "no shared conv": {"shared_convs": 0},
    "stem + branches": {"shared_convs": 1},
    "all convs shared": {"shared_convs": 3},
}


def perturbed_model(**layout) -> MultiTaskCGCNN:
    """A model in eval mode with random BatchNorm affines and running statistics."""
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=32, h_fea_len=16, n_conv=3, **layout)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_(0.0, 0.5)
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
    return model.eval()


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_inference_matches_eval(demo_table: pa.Table, layout: dict) -> None:
    model = perturbed_model(**layout)
    frozen = InferenceModel(model)
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        expected = model(batch)
    got = frozen(batch)
    assert got.shape == expected.shape == (24, 3)
    assert (got - expected).abs().max() <= 1e-4
    assert not got.requires_grad
    irregular = without_last_edge(batch)  # gathers and scatters instead of broadcasts and reshapes
    with torch.no_grad():
        expected = model(irregular)
    assert (frozen(irregular) - expected).abs().max() <= 1e-4


def test_pre_activations_beyond_exps_range_take_the_exact_gate(demo_table: pa.Table) -> None:
    """``gate_``'s ``exp`` overflows where c > 88 (float32): that convolution is computed again with softplus and
    sigmoid, and the outputs are still the eval model's."""
    model = perturbed_model(shared_convs=1)
    with torch.no_grad():
        model.trunks[0].convs[0].fc_full.weight.mul_(300.0)
    batch = collate_arrow(demo_table, TASKS)
    frozen = InferenceModel(model)
    atom_fea = frozen.trunks[0].table.index_select(0, batch.atomic_numbers)
    edges, edge_fea = EdgeIndex.of(batch), frozen.expansion(batch.edge_dist)
    pre = frozen.trunks[0].stem[0].pre_activations(atom_fea, edge_fea, edges)
    assert not torch.isfinite(gate_(pre)).all()  # the fast gate alone fails on this convolution
    with torch.no_grad():
        expected = model(batch)
    got = frozen(batch)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_freezing_copies_the_weights(demo_table: pa.Table) -> None:
    model = perturbed_model(shared_convs=1)
    frozen = InferenceModel(model)
    batch = collate_arrow(demo_table, TASKS)
    before = frozen(batch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(frozen(batch), before)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_frozen_crystal_vectors_match_eval(demo_table: pa.Table, layout: dict) -> None:
    """#14: the embeddings ``mtc embed`` writes are the eval model's pooled vectors, in every layout."""
    model = perturbed_model(**layout)
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        expected = model.group_features(batch)
    got = InferenceModel(model).group_features(batch)
    assert len(got) == len(expected) == len(model.groups)
    for frozen, plain in zip(got, expected, strict=True):
        assert frozen.shape == plain.shape == (24, 32)
        # float32 round-off: the perturbed BatchNorms give vectors up to ~1,600, so the bound is relative
        assert (frozen - plain).abs().max() <= 1e-5 * plain.abs().max()


@pytest.mark.parametrize("layout", [LAYOUTS["one shared trunk"], LAYOUTS["stem + branches"]], ids=["trunk", "branches"])
def test_bfloat16_convolutions_stay_near_float32_and_return_float32(demo_table: pa.Table, layout: dict) -> None:
    model = perturbed_model(**layout)
    batch = collate_arrow(demo_table, TASKS)
    exact, low = InferenceModel(model), InferenceModel(model, torch.bfloat16)
    assert low.trunks[0].stem[0].atom_weight.dtype == torch.bfloat16 and low.trunks[0].table.dtype == torch.bfloat16
    got, expected = low(batch), exact(batch)
    assert got.dtype == torch.float32 and [f.dtype for f in low.group_features(batch)] == [torch.float32] * len(
        model.groups
    )
    # not exact (the convolutions did run in bfloat16), not garbage; an untrained model's features are poorly
    # conditioned, so how near is bounded on a trained model (tests/predict/test_precision.py)
    error = (got - expected).abs().max(dim=0).values
    assert (error > 0).all() and (error < expected.std(dim=0)).all(), (error, expected.std(dim=0))
