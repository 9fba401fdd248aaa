"""PCGrad on hand-computed gradients."""

from __future__ import annotations

import torch

from mtc.model.surgery import pcgrad


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_conflicting_gradients_are_projected_by_hand() -> None:
    # g1 . g2 = -1 < 0: g1 -> g1 - (-1 / 2) g2 = (0.5, 0.5); g2 -> g2 - (-1 / 1) g1 = (0, 1); sum (0.5, 1.5)
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    (combined,) = pcgrad([[g1], [g2]], seeded())
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))
    # each projected gradient no longer conflicts with the other task's original one
    assert torch.tensor([0.5, 0.5]) @ g2 >= 0 and torch.tensor([0.0, 1.0]) @ g1 >= 0


def test_gradients_without_conflict_are_summed_unchanged() -> None:
    grads = [[torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])], [torch.tensor([1.0, 1.0]), torch.tensor([[0.5]])]]
    combined = pcgrad(grads, seeded())
    torch.testing.assert_close(combined[0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(combined[1], torch.tensor([[2.5]]))


def test_the_dot_product_spans_all_parameters_and_shapes_come_back() -> None:
    # per parameter the first entries conflict (1 * -1), but over both parameters 1*-1 + 2*1 = 1 > 0: no projection
    g1 = [torch.tensor([1.0]), torch.tensor([[2.0, 0.0]])]
    g2 = [torch.tensor([-1.0]), torch.tensor([[1.0, 0.0]])]
    combined = pcgrad([g1, g2], seeded())
    assert [c.shape for c in combined] == [torch.Size([1]), torch.Size([1, 2])]
    torch.testing.assert_close(combined[0], torch.tensor([0.0]))
    torch.testing.assert_close(combined[1], torch.tensor([[3.0, 0.0]]))


def test_a_zero_gradient_is_no_conflict() -> None:
    (combined,) = pcgrad([[torch.tensor([1.0, -2.0])], [torch.zeros(2)]], seeded())
    torch.testing.assert_close(combined, torch.tensor([1.0, -2.0]))


def test_the_task_order_comes_from_the_generator() -> None:
    # three pairwise conflicting gradients: the projections depend on the order the other tasks are visited in
    grads = [[torch.tensor([1.0, 0.0])], [torch.tensor([-0.8, 0.6])], [torch.tensor([-0.6, -0.8])]]
    results = {tuple(pcgrad(grads, seeded(seed))[0].tolist()) for seed in range(20)}
    assert len(results) > 1
    torch.testing.assert_close(pcgrad(grads, seeded(3))[0], pcgrad(grads, seeded(3))[0])
