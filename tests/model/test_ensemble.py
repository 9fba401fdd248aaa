"""The batched K-member forward pass equals running each member alone."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from torch import nn

from mtc.data.batching import collate_arrow
from mtc.model.ensemble import EnsembleInference
from mtc.model.inference import InferenceModel
from tests.model.test_cgcnn import TASKS
from tests.model.test_inference import LAYOUTS, perturbed_model


def members(k: int, **layout) -> list:
    """K models of one layout, each with its own weights and BatchNorm statistics."""
    models = []
    for seed in range(k):
        model = perturbed_model(**layout)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(100 + seed)
            norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
            for tensor in [*model.parameters(), *(bn.running_var for bn in norms)]:
                tensor.mul_(1 + 0.2 * torch.rand_like(tensor))  # positive factors keep running_var > 0
        models.append(model)
    return models


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_stacked_members_match_members_one_by_one(demo_table: pa.Table, layout: dict) -> None:
    models = members(3, **layout)
    batch = collate_arrow(demo_table, TASKS)
    expected = torch.stack([InferenceModel(m)(batch) for m in models])
    for stacked in (True, False):
        got = EnsembleInference(models, stacked=stacked)(batch)
        assert got.shape == expected.shape == (3, 24, 3)
        assert (got - expected).abs().max() <= 1e-4, stacked
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the members differ: the test can tell them apart


def test_bfloat16_ensemble_is_its_members_in_bfloat16(demo_table: pa.Table) -> None:
    models = members(2, shared_convs=1)
    batch = collate_arrow(demo_table, TASKS)
    expected = torch.stack([InferenceModel(m, torch.bfloat16)(batch) for m in models])
    for stacked in (True, False):
        got = EnsembleInference(models, stacked=stacked, dtype=torch.bfloat16)(batch)
        assert got.dtype == torch.float32
        if stacked:  # the same bfloat16 operations grouped differently: near, not the same
            assert ((got - expected).abs().max(dim=1).values < expected.std(dim=1)).all()
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
