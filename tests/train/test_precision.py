"""``train.precision: bfloat16``: the training objective autocasts the convolutions only (no Ray, real crystals)."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from mtc.config import TrainConfig
from mtc.data.batching import collate_arrow
from mtc.model.cgcnn import compile_convolutions
from mtc.model.losses import MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN
from mtc.train.loop import LossModule
from tests.model.conftest import demo_rows, graph_table
from tests.model.test_cgcnn import TASKS


def _gradients(objective: LossModule, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's raw outputs (B, T) and its flattened gradient after one backward pass."""
    objective.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=objective.autocast):
        outputs = objective.model(batch)
    objective.loss(outputs, batch.targets, batch.mask).total.backward()
    return outputs.detach(), torch.cat([p.grad.flatten() for p in objective.parameters() if p.grad is not None])


@pytest.mark.parametrize("compiled", [False, True])
def test_bfloat16_autocast_keeps_float32_outputs_and_the_float32_gradient_direction(compiled: bool) -> None:
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=32, h_fea_len=16, n_conv=3, shared_convs=2)
    loss = MultiTaskLoss(TASKS, strategy="uncertainty", mean=[-1.0, 1.0, 0.0], std=[1.0, 1.5, 1.0])
    full = LossModule(model, loss)
    mixed = LossModule(copy.deepcopy(model), copy.deepcopy(loss), precision="bfloat16")
    if compiled:
        compile_convolutions(mixed.model)
    assert not full.autocast and mixed.autocast
    batch = collate_arrow(graph_table(demo_rows(48)), TASKS)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        atoms = mixed.model.trunks[0].atom_features(batch)
        assert atoms.dtype == torch.float32  # the atom stream and its sums stay in the model's precision
        assert F.linear(atoms, mixed.model.trunks[0].embedding.weight[:, :32]).dtype == torch.bfloat16
    out_full, grad_full = _gradients(full, batch)
    out_mixed, grad_mixed = _gradients(mixed, batch)
    assert out_mixed.dtype == torch.float32  # heads ran outside autocast: no rounding of the outputs to bfloat16
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert all(p.grad.dtype == torch.float32 for p in mixed.parameters() if p.grad is not None)
    # bfloat16 keeps ~3 significant digits: close to, not equal to, float32
    assert 0 < (out_mixed - out_full).abs().max() < 0.05 * out_full.abs().max()
    assert F.cosine_similarity(grad_mixed, grad_full, dim=0) > 0.99


def test_precision_names_its_choices() -> None:
    tasks = [{"name": "band_gap", "unit": "eV"}]
    assert TrainConfig(tasks=tasks).precision == "float32"
    with pytest.raises(ValidationError, match="float32"):
        TrainConfig(tasks=tasks, precision="float16")
