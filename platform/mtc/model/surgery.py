"""Gradient surgery for conflicting task gradients on shared parameters: PCGrad (Yu et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pcgrad(grads: Sequence[Sequence[torch.Tensor]], generator: torch.Generator) -> list[torch.Tensor]:
    """Projects each task's gradient off the normal plane of every task gradient it conflicts with, then sums.

    For task i, in a random order of the other tasks j: when ``g_i . g_j < 0`` (they conflict),
    ``g_i -= (g_i . g_j) / |g_j|^2 g_j``, always against the original ``g_j``. Gradients that conflict with no
    other are left unchanged, so without conflicts the result is the plain sum. The dot products run over all
    the parameters together (one vector per task), as in the paper.

    Args:
        grads: T lists of P tensors: task k's gradient of each shared parameter (same shapes for every task).
        generator: Draws the task orders; under DDP give every rank one seeded the same way, advanced alike.

    Returns:
        P tensors, the combined gradient of each shared parameter.
    """
    shapes = [g.shape for g in grads[0]]
    flat = torch.stack([torch.cat([g.reshape(-1) for g in task]) for task in grads])  # (T, sum of sizes)
    projected = flat.clone()
    n_tasks = flat.shape[0]
    for i in range(n_tasks):
        for j in torch.randperm(n_tasks, generator=generator).tolist():
            if j == i:
                continue
            dot = projected[i] @ flat[j]
            if dot < 0:  # |g_j| > 0 here, since the dot product is not zero
                projected[i] -= dot / (flat[j] @ flat[j]) * flat[j]
    combined = projected.sum(dim=0)
    return [
        part.reshape(shape) for part, shape in zip(combined.split([s.numel() for s in shapes]), shapes, strict=True)
    ]
