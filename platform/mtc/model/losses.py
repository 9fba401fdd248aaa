"""Masked multitask loss with fixed, learned (homoscedastic uncertainty) or dynamic (DWA) task weights."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtc.tasks import TaskSpec, as_tasks

DWA_EPOCHS = 2  # DWA looks back two epochs


class LossOutput(NamedTuple):
    """Loss of one batch.

    Attributes:
        total: Scalar to back-propagate, ``terms.sum()``.
        per_task: (T,) masked mean loss of each task; 0 for a task without labels in the batch.
        counts: long (T,) number of labelled rows per task.
        terms: (T,) each task's weighted share of ``total`` (what gradient surgery differentiates per task).
    """

    total: torch.Tensor
    per_task: torch.Tensor
    counts: torch.Tensor
    terms: torch.Tensor


class MultiTaskLoss(nn.Module):
    """Per-task masked losses on normalised targets, combined with fixed or learned weights.

    For task k, ``L_k`` is the mean over the rows that have label k of MSE / L1 (regression, on
    ``(target - mean) / std``) or BCE with logits (binary). ``"fixed"``: ``total = sum_k w_k L_k``.
    ``"uncertainty"`` (Kendall et al. 2018): ``total = sum_k exp(-s_k) L_k + s_k`` with learned
    ``s_k = log sigma_k^2`` (``log_vars``); a task without labels in the batch contributes nothing.
    With ``"uncertainty"`` the module has parameters: give them to the optimiser (and, under DDP,
    keep them in sync, e.g. by wrapping model and loss in one module). ``"dwa"`` (Liu et al. 2019):
    ``total = sum_k w_k L_k`` with ``w = dwa_weights(loss_history, temperature)``, updated by ``end_epoch``
    from each epoch's mean task losses; the last two epochs' losses are a buffer, so they are checkpointed
    with the state_dict.

    Args:
        tasks: T task specs (or their dicts), in the model's output order.
        strategy: ``"fixed"``, ``"uncertainty"`` or ``"dwa"``.
        weights: Fixed weights, a (T,) sequence or a mapping name -> weight (missing names get 1);
            default all 1. Only for ``"fixed"``.
        mean: (T,) normaliser means; default 0.
        std: (T,) normaliser standard deviations; default 1.
        temperature: DWA's softmax temperature (``"dwa"`` only).
    """

    def __init__(
        self,
        tasks: Iterable[TaskSpec | Mapping[str, Any]],
        strategy: Literal["fixed", "uncertainty"] = "fixed",
        weights: Sequence[float] | Mapping[str, float] | None = None,
        mean: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        std: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        self.tasks = as_tasks(tasks)
        n_tasks = len(self.tasks)
        if strategy not in ("fixed", "uncertainty", "dwa"):
            raise ValueError(f"unknown loss strategy {strategy!r}")
        if strategy != "fixed" and weights is not None:
            raise ValueError(f"strategy {strategy!r} sets the weights itself; do not pass fixed weights")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.strategy = strategy
        self.temperature = temperature
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
        if strategy == "dwa":  # NaN rows: epochs not seen yet
            self.register_buffer("loss_history", torch.full((DWA_EPOCHS, n_tasks), math.nan))

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
            terms = self.weights * per_task
        else:
            present = (counts > 0).to(per_task.dtype)
            terms = present * (torch.exp(-self.log_vars) * per_task + self.log_vars)
        return LossOutput(terms.sum(), per_task, counts, terms)

    @torch.no_grad()
    def end_epoch(self, task_losses: torch.Tensor) -> None:
        """DWA: record an epoch's mean loss per task (T,) and set the next epoch's weights.

        Under DDP every rank must pass the same values (the all-ranks mean), so the weights stay identical.
        """
        if self.strategy != "dwa":
            raise ValueError(f"end_epoch is for strategy 'dwa', not {self.strategy!r}")
        history = torch.cat([self.loss_history[1:], task_losses.to(self.loss_history).reshape(1, -1)])
        self.loss_history.copy_(history)
        self.weights.copy_(dwa_weights(history, self.temperature))

    def task_weights(self) -> torch.Tensor:
        """Current effective weight of each task, (T,): ``w_k`` or ``exp(-s_k)``."""
        if self.log_vars is None:
            return self.weights.clone()
        return torch.exp(-self.log_vars.detach())


def dwa_weights(history: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Dynamic weight averaging (Liu et al. 2019): ``w_k = T exp(r_k / t) / sum_j exp(r_j / t)``.

    ``r_k = L_k(e-1) / L_k(e-2)`` is the ratio of task k's mean loss in the last two epochs: a task whose loss
    falls slowly gets more weight. The weights sum to the number of tasks T; they are all 1 before two epochs
    are known. A task whose ratio is undefined (no labels in an epoch: NaN, or a zero loss) counts as ratio 1.

    Args:
        history: (E, T) mean task losses of past epochs, oldest first; rows of NaN are epochs not seen yet.
        temperature: t > 0.

    Returns:
        (T,) weights.
    """
    n_tasks = history.shape[1]
    if history.shape[0] < 2:
        return torch.ones(n_tasks, dtype=history.dtype, device=history.device)
    previous, last = history[-2], history[-1]
    ratio = last / previous
    ratio = torch.where(torch.isfinite(ratio) & (previous > 0), ratio, torch.ones_like(ratio))
    return n_tasks * torch.softmax(ratio / temperature, dim=0)


def _vector(
    values: Sequence[float] | np.ndarray | torch.Tensor | None, n: int, default: float, what: str
) -> torch.Tensor:
    if values is None:
        return torch.full((n,), default)
    out = torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1).clone()
    if out.numel() != n:
        raise ValueError(f"{what} has {out.numel()} entries for {n} tasks")
    return out
