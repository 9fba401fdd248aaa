"""Masked multitask loss with fixed or learned (homoscedastic uncertainty) task weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtc.tasks import TaskSpec, as_tasks


class LossOutput(NamedTuple):
    """Loss of one batch.

    Attributes:
        total: Scalar to back-propagate.
        per_task: (T,) masked mean loss of each task; 0 for a task without labels in the batch.
        counts: long (T,) number of labelled rows per task.
    """

    total: torch.Tensor
    per_task: torch.Tensor
    counts: torch.Tensor


class MultiTaskLoss(nn.Module):
    """Per-task masked losses on normalised targets, combined with fixed or learned weights.

    For task k, ``L_k`` is the mean over the rows that have label k of MSE / L1 (regression, on
    ``(target - mean) / std``) or BCE with logits (binary). ``"fixed"``: ``total = sum_k w_k L_k``.
    ``"uncertainty"`` (Kendall et al. 2018): ``total = sum_k exp(-s_k) L_k + s_k`` with learned
    ``s_k = log sigma_k^2`` (``log_vars``); a task without labels in the batch contributes nothing.
    With ``"uncertainty"`` the module has parameters: give them to the optimiser (and, under DDP,
    keep them in sync, e.g. by wrapping model and loss in one module).

    Args:
        tasks: T task specs (or their dicts), in the model's output order.
        strategy: ``"fixed"`` or ``"uncertainty"``.
        weights: Fixed weights, a (T,) sequence or a mapping name -> weight (missing names get 1);
            default all 1. Only for ``"fixed"``.
        mean: (T,) normaliser means; default 0.
        std: (T,) normaliser standard deviations; default 1.
    """

    def __init__(
        self,
        tasks: Iterable[TaskSpec | Mapping[str, Any]],
        strategy: Literal["fixed", "uncertainty"] = "fixed",
        weights: Sequence[float] | Mapping[str, float] | None = None,
        mean: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        std: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.tasks = as_tasks(tasks)
        n_tasks = len(self.tasks)
        if strategy not in ("fixed", "uncertainty"):
            raise ValueError(f"unknown loss strategy {strategy!r}")
        if strategy == "uncertainty" and weights is not None:
            raise ValueError("weights are learned with strategy 'uncertainty'; do not pass fixed weights")
        self.strategy = strategy
        if isinstance(weights, Mapping):
            unknown = set(weights) - {t.name for t in self.tasks}
            if unknown:
                raise ValueError(f"weights for unknown tasks: {sorted(unknown)}")
            weights = [float(weights.get(t.name, 1.0)) for t in self.tasks]
        self.register_buffer("weights", _vector(weights, n_tasks, 1.0, "weights"))
        self.register_buffer("mean", _vector(mean, n_tasks, 0.0, "mean"))
        self.register_buffer("std", _vector(std, n_tasks, 1.0, "std"))
        self.register_buffer("is_binary", torch.tensor([t.kind == "binary" for t in self.tasks]))
        self.register_buffer("is_l1", torch.tensor([t.kind == "regression" and t.loss == "l1" for t in self.tasks]))
        self.log_vars = nn.Parameter(torch.zeros(n_tasks)) if strategy == "uncertainty" else None

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> LossOutput:
        """Args: outputs (B, T) raw model outputs, targets (B, T) physical values, mask bool (B, T)."""
        targets = torch.where(mask, targets, torch.zeros_like(targets))
        normalised = torch.where(self.is_binary, targets, (targets - self.mean) / self.std)
        diff = outputs - normalised
        regression = torch.where(self.is_l1, diff.abs(), diff.square())
        binary = F.binary_cross_entropy_with_logits(outputs, normalised, reduction="none")
        elementwise = torch.where(self.is_binary, binary, regression)
        elementwise = torch.where(mask, elementwise, torch.zeros_like(elementwise))
        counts = mask.sum(dim=0)
        per_task = elementwise.sum(dim=0) / counts.clamp(min=1).to(elementwise.dtype)
        if self.log_vars is None:
            total = (self.weights * per_task).sum()
        else:
            present = (counts > 0).to(per_task.dtype)
            total = (present * (torch.exp(-self.log_vars) * per_task + self.log_vars)).sum()
        return LossOutput(total, per_task, counts)

    def task_weights(self) -> torch.Tensor:
        """Current effective weight of each task, (T,): ``w_k`` or ``exp(-s_k)``."""
        if self.log_vars is None:
            return self.weights.clone()
        return torch.exp(-self.log_vars.detach())


def _vector(
    values: Sequence[float] | np.ndarray | torch.Tensor | None, n: int, default: float, what: str
) -> torch.Tensor:
    if values is None:
        return torch.full((n,), default)
    out = torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1).clone()
    if out.numel() != n:
        raise ValueError(f"{what} has {out.numel()} entries for {n} tasks")
    return out
