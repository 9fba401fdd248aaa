"""One PCGrad step of the training loop on one rank (no Ray): which gradient each parameter gets."""

from __future__ import annotations

import torch

from mtc.data.batching import collate_arrow
from mtc.model.losses import MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN
from mtc.model.surgery import pcgrad
from mtc.train.loop import LossModule, _pcgrad_backward
from tests.model.conftest import demo_rows, graph_table
from tests.model.test_cgcnn import TASKS


def test_shared_parameters_get_pcgrad_and_the_others_the_plain_gradient() -> None:
    torch.manual_seed(0)
    groups = [["formation_energy_per_atom", "band_gap"], ["is_metal"]]
    model = MultiTaskCGCNN(TASKS, atom_fea_len=8, h_fea_len=8, n_conv=2, shared_convs=1, groups=groups)
    objective = LossModule(model, MultiTaskLoss(TASKS, strategy="uncertainty", mean=[-1.0, 1.0, 0.0]))
    batch = collate_arrow(graph_table(demo_rows(16)), TASKS)
    shared = model.shared_parameters()  # the stem and the two-task group's convolution
    assert len(shared) == sum(1 for _ in [*model.trunks[0].parameters(), *model.branches[0].parameters()])

    out = _pcgrad_backward(objective, batch, torch.Generator().manual_seed(7), world=1)
    got = {id(p): p.grad.clone() for p in objective.parameters()}

    # the same step by hand: per-task gradients of the shared parameters (zeros where a task does not reach)
    reference = objective(batch)
    per_task = [
        [torch.zeros_like(p) if g is None else g for p, g in zip(shared, grads, strict=True)]
        for grads in (torch.autograd.grad(t, shared, retain_graph=True, allow_unused=True) for t in reference.terms)
    ]
    expected_shared = pcgrad(per_task, torch.Generator().manual_seed(7))
    objective.zero_grad()
    reference.total.backward()
    torch.testing.assert_close(out.total, reference.total)
    for param, expected in zip(shared, expected_shared, strict=True):
        torch.testing.assert_close(got[id(param)], expected)
    shared_ids = {id(p) for p in shared}
    others = [p for p in objective.parameters() if id(p) not in shared_ids]
    other_ids = {id(p) for p in others}
    assert id(objective.loss.log_vars) in other_ids and all(id(p) in other_ids for p in model.heads.parameters())
    for param in others:
        torch.testing.assert_close(got[id(param)], param.grad)
    # the batch has conflicting task gradients, so surgery changed the shared gradient
    assert any(not torch.allclose(got[id(p)], p.grad) for p in shared)
