"""MT-CGCNN: hard parameter sharing, one CGCNN trunk per task group and one head per task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mtc.data.batching import CrystalBatch
from mtc.model.cgcnn import CGCNNTrunk
from mtc.model.heads import Head
from mtc.tasks import TaskSpec, as_tasks, check_partition


class MultiTaskCGCNN(nn.Module):
    """Multitask CGCNN; outputs are normalised regression values and binary logits.

    Args:
        tasks: T task specs (or their dicts); fixes the output column order.
        atom_fea_len: F, atom / crystal feature width of each trunk.
        h_fea_len: Hidden width of each head.
        n_conv: Convolutions per trunk.
        n_h: Hidden layers per head.
        groups: Optional partition of the task names; each group shares its own trunk.
            Default: one trunk shared by all tasks.
        dmin: First Gaussian centre (Å).
        dmax: Last Gaussian centre (Å).
        step: Gaussian spacing and width (Å).
    """

    def __init__(
        self,
        tasks: Iterable[TaskSpec | Mapping[str, Any]],
        atom_fea_len: int = 64,
        h_fea_len: int = 128,
        n_conv: int = 3,
        n_h: int = 1,
        groups: Sequence[Sequence[str]] | None = None,
        dmin: float = 0.0,
        dmax: float = 8.0,
        step: float = 0.2,
    ) -> None:
        super().__init__()
        self.tasks = as_tasks(tasks)
        names = [t.name for t in self.tasks]
        self.groups = (tuple(names),) if groups is None else tuple(tuple(g) for g in groups)
        check_partition(self.groups, names)
        group_of = {name: g for g, group in enumerate(self.groups) for name in group}
        self.trunk_of_task = [group_of[name] for name in names]
        self.hparams = {
            "atom_fea_len": atom_fea_len,
            "h_fea_len": h_fea_len,
            "n_conv": n_conv,
            "n_h": n_h,
            "dmin": dmin,
            "dmax": dmax,
            "step": step,
        }
        self.trunks = nn.ModuleList(CGCNNTrunk(atom_fea_len, n_conv, dmin, dmax, step) for _ in self.groups)
        self.heads = nn.ModuleList(Head(atom_fea_len, h_fea_len, n_h) for _ in self.tasks)
        self.register_buffer("is_binary", torch.tensor([t.kind == "binary" for t in self.tasks]), persistent=False)

    def crystal_features(self, batch: CrystalBatch) -> torch.Tensor:
        """Pooled features of every trunk, concatenated in group order: (B, n_groups * F)."""
        return torch.cat([trunk(batch) for trunk in self.trunks], dim=1)

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns raw outputs (B, T) in task order: normalised regression values and binary logits."""
        features = [trunk(batch) for trunk in self.trunks]
        return torch.stack([head(features[g]) for head, g in zip(self.heads, self.trunk_of_task, strict=True)], dim=1)

    def to_physical(
        self,
        outputs: torch.Tensor,
        mean: torch.Tensor | np.ndarray | Sequence[float],
        std: torch.Tensor | np.ndarray | Sequence[float],
    ) -> torch.Tensor:
        """Turns raw outputs into predictions: de-normalised regression values, binary probabilities.

        Args:
            outputs: (B, T) from ``forward``.
            mean: (T,) normaliser means (see ``mtc.tasks.fit_normalizer``).
            std: (T,) normaliser standard deviations.

        Returns:
            (B, T).
        """
        mean_t = torch.as_tensor(mean, dtype=outputs.dtype, device=outputs.device)
        std_t = torch.as_tensor(std, dtype=outputs.dtype, device=outputs.device)
        return torch.where(self.is_binary, torch.sigmoid(outputs), outputs * std_t + mean_t)

    def config(self) -> dict[str, Any]:
        """Plain-data constructor arguments; ``model_from_config(model.config())`` rebuilds the model."""
        return {
            "tasks": [t.model_dump() for t in self.tasks],
            "groups": [list(g) for g in self.groups],
            **self.hparams,
        }


def model_from_config(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None
) -> MultiTaskCGCNN:
    """Builds a model from plain hyperparameters, optionally loading weights.

    Args:
        config: ``tasks`` (list of task dicts) and any other ``MultiTaskCGCNN`` keyword argument.
        state_dict: Weights saved from a model with the same config (loaded strictly).

    Returns:
        The model.
    """
    model = MultiTaskCGCNN(**config)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
