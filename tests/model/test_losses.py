"""MultiTaskLoss: masking, hand-computed values, uncertainty weighting."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from mtc.data.batching import collate_arrow
from mtc.model.losses import MultiTaskLoss, dwa_weights
from mtc.model.multitask import MultiTaskCGCNN
from mtc.tasks import as_tasks, fit_normalizer

TASKS = as_tasks(
    [
        {"name": "e", "loss": "mse"},
        {"name": "g", "loss": "l1"},
        {"name": "m", "kind": "binary", "derive": "g == 0"},
    ]
)
NAN = float("nan")


def bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_masked_loss_matches_hand_computation() -> None:
    outputs = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3], [-0.4, 0.8, 0.1]])
    targets = torch.tensor([[2.0, 3.0, 1.0], [NAN, 0.0, 0.0], [1.0, NAN, 1.0]])
    mask = torch.tensor([[True, True, True], [False, True, True], [True, False, False]])
    loss = MultiTaskLoss(TASKS, weights={"e": 2.0, "m": 0.5}, mean=[1.0, 2.0, 0.0], std=[2.0, 0.5, 1.0])
    out = loss(outputs, targets, mask)

    e = ((0.5 - (2.0 - 1.0) / 2.0) ** 2 + (-0.4 - (1.0 - 1.0) / 2.0) ** 2) / 2
    g = (abs(-1.0 - (3.0 - 2.0) / 0.5) + abs(0.2 - (0.0 - 2.0) / 0.5)) / 2
    m = (bce(2.0, 1.0) + bce(-0.3, 0.0)) / 2
    torch.testing.assert_close(out.per_task, torch.tensor([e, g, m]))
    torch.testing.assert_close(out.total, torch.tensor(2.0 * e + g + 0.5 * m))
    assert out.counts.tolist() == [2, 2, 2]


def test_task_without_labels_contributes_zero() -> None:
    outputs = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([[1.0, NAN, NAN]] * 4)
    mask = torch.tensor([[True, False, False]] * 4)
    for strategy in ("fixed", "uncertainty"):
        loss = MultiTaskLoss(TASKS, strategy=strategy)
        out = loss(outputs, targets, mask)
        assert out.per_task[1] == 0 and out.per_task[2] == 0 and out.counts.tolist() == [4, 0, 0]
        torch.testing.assert_close(out.total, ((outputs[:, 0] - 1.0) ** 2).mean())
        (grad,) = torch.autograd.grad(out.total, outputs)
        assert torch.isfinite(grad).all() and (grad[:, 1:] == 0).all()


def test_uncertainty_formula_and_absent_task_gets_no_gradient() -> None:
    loss = MultiTaskLoss(TASKS, strategy="uncertainty")
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.5, -0.2, 1.0]))
    outputs = torch.tensor([[1.0, 2.0, 0.0]])
    out = loss(outputs, torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[True, True, False]]))
    expected = math.exp(-0.5) * 1.0 + 0.5 + math.exp(0.2) * 2.0 - 0.2
    torch.testing.assert_close(out.total, torch.tensor(expected))
    out.total.backward()
    assert loss.log_vars.grad[2] == 0 and (loss.log_vars.grad[:2] != 0).all()
    torch.testing.assert_close(loss.task_weights(), torch.exp(-torch.tensor([0.5, -0.2, 1.0])))


def test_uncertainty_weighting_learns(demo_table: pa.Table) -> None:
    tasks = as_tasks(
        [
            {"name": "formation_energy_per_atom"},
            {"name": "band_gap"},
            {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
        ]
    )
    torch.manual_seed(0)
    batch = collate_arrow(demo_table, tasks)
    mean, std = fit_normalizer(batch.targets.numpy(), batch.mask.numpy(), tasks)
    model = MultiTaskCGCNN(tasks, atom_fea_len=16, h_fea_len=16, n_conv=2)
    loss = MultiTaskLoss(tasks, strategy="uncertainty", mean=mean, std=std)
    optimiser = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.05)
    history = []
    for _ in range(12):
        optimiser.zero_grad()
        out = loss(model(batch), batch.targets, batch.mask)
        out.total.backward()
        optimiser.step()
        history.append((out.total.item(), out.per_task.sum().item()))
    assert (loss.log_vars.detach().abs() > 0.05).all()
    assert history[-1][0] < history[0][0] and history[-1][1] < history[0][1]


def test_argument_errors() -> None:
    for strategy in ("uncertainty", "dwa"):
        with pytest.raises(ValueError, match="sets the weights itself"):
            MultiTaskLoss(TASKS, strategy=strategy, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="temperature"):
        MultiTaskLoss(TASKS, strategy="dwa", temperature=0.0)
    with pytest.raises(ValueError, match="end_epoch is for strategy 'dwa'"):
        MultiTaskLoss(TASKS).end_epoch(torch.ones(3))
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskLoss(TASKS, weights={"nope": 1.0})
    with pytest.raises(ValueError, match="entries"):
        MultiTaskLoss(TASKS, mean=[0.0, 1.0])
    with pytest.raises(ValueError, match="strategy"):
        MultiTaskLoss(TASKS, strategy="gradnorm")
    assert list(MultiTaskLoss(TASKS).parameters()) == []


def test_dwa_weights_by_hand() -> None:
    """Liu et al. 2019: w_k = T exp(r_k / t) / sum_j exp(r_j / t), r_k = L_k(e-1) / L_k(e-2)."""
    history = torch.tensor([[1.0, 2.0, 4.0], [0.5, 2.0, 2.0]])  # ratios 0.5, 1.0, 0.5
    for t in (2.0, 0.5):
        e_half, e_one = math.exp(0.5 / t), math.exp(1.0 / t)
        expected = 3 * torch.tensor([e_half, e_one, e_half]) / (2 * e_half + e_one)
        torch.testing.assert_close(dwa_weights(history, t), expected)
    # only the last two epochs count; the task whose loss fell least gets the most weight
    longer = torch.cat([torch.tensor([[9.0, 9.0, 9.0]]), history])
    torch.testing.assert_close(dwa_weights(longer), dwa_weights(history))
    assert dwa_weights(history).argmax() == 1


def test_dwa_weights_are_equal_until_two_epochs_are_known_and_undefined_ratios_count_as_one() -> None:
    assert dwa_weights(torch.tensor([[3.0, 1.0]])).tolist() == [1.0, 1.0]
    assert dwa_weights(torch.tensor([[math.nan, math.nan], [3.0, 1.0]])).tolist() == [1.0, 1.0]
    # task 2 had no labels last epoch (NaN), task 3 a zero loss before: both ratio 1, like task 1
    weights = dwa_weights(torch.tensor([[1.0, 1.0, 0.0, 2.0], [1.0, NAN, 1.0, 1.0]]))
    assert weights[0] == weights[1] == weights[2] and weights[3] < weights[0]
    torch.testing.assert_close(weights.sum(), torch.tensor(4.0))


def test_dwa_loss_weighs_the_terms_and_keeps_its_history_in_the_state_dict() -> None:
    loss = MultiTaskLoss(TASKS, strategy="dwa", temperature=1.0)
    outputs, targets, mask = torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    first = loss(outputs, targets, mask)
    torch.testing.assert_close(first.total, first.per_task.sum())  # equal weights at first
    loss.end_epoch(torch.tensor([1.0, 2.0, 4.0]))
    assert loss.task_weights().tolist() == [1.0, 1.0, 1.0]
    loss.end_epoch(torch.tensor([0.5, 2.0, 2.0]))
    expected = dwa_weights(torch.tensor([[1.0, 2.0, 4.0], [0.5, 2.0, 2.0]]), 1.0)
    torch.testing.assert_close(loss.task_weights(), expected)
    out = loss(outputs, targets, mask)
    torch.testing.assert_close(out.terms, expected * out.per_task)
    torch.testing.assert_close(out.total, out.terms.sum())

    restored = MultiTaskLoss(TASKS, strategy="dwa", temperature=1.0)
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored.task_weights(), expected)
    restored.end_epoch(torch.tensor([0.5, 1.0, 1.0]))  # continues from the restored history: ratios 1, .5, .5
    torch.testing.assert_close(
        restored.task_weights(), dwa_weights(torch.tensor([[0.5, 2.0, 2.0], [0.5, 1.0, 1.0]]), 1.0)
    )
