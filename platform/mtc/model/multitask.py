"""MT-CGCNN: hard parameter sharing (whole trunks per task group, or a shared stem with per-group upper
convolutions) and one head per task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mtc.data.batching import CrystalBatch
from mtc.model.cgcnn import CGCNNTrunk, ConvLayer, convolve, mean_pool
from mtc.model.heads import Head
from mtc.tasks import TaskSpec, as_tasks, check_partition


class MultiTaskCGCNN(nn.Module):
    """Multitask CGCNN; outputs are normalised regression values and binary logits.

    Two sharing layouts. ``shared_convs=None``: one whole trunk (embedding + ``n_conv`` convolutions) per task
    group, nothing shared across groups. ``shared_convs=k``: the embedding and the first k convolutions form one
    stem shared by every task; each group then has its own ``n_conv - k`` convolutions and pooling (``groups``
    default: one group per task). With ``k = n_conv`` the groups own nothing and the model is the single shared
    trunk of ``shared_convs=None`` (same weights, same state_dict keys).

    Args:
        tasks: T task specs (or their dicts); fixes the output column order.
        atom_fea_len: F, atom / crystal feature width of each trunk.
        h_fea_len: Hidden width of each head.
        n_conv: Convolutions from the embedding to the pooling.
        n_h: Hidden layers per head.
        groups: Optional partition of the task names (see above). Default: one group of all tasks
            (``shared_convs=None``) or one group per task.
        dmin: First Gaussian centre (Å).
        dmax: Last Gaussian centre (Å).
        step: Gaussian spacing and width (Å).
        shared_convs: k in 0..n_conv, or None (see above).
        head_layers: Task name -> hidden layers of that task's head, overriding ``n_h``.
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
        shared_convs: int | None = None,
        head_layers: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.tasks = as_tasks(tasks)
        names = [t.name for t in self.tasks]
        if shared_convs is not None and not 0 <= shared_convs <= n_conv:
            raise ValueError(f"shared_convs must be in 0..n_conv={n_conv}, got {shared_convs}")
        unknown = set(head_layers or {}) - set(names)
        if unknown:
            raise ValueError(f"head_layers names unknown tasks {sorted(unknown)}")
        if groups is None:
            groups = [names] if shared_convs is None else [[name] for name in names]
        self.groups = tuple(tuple(g) for g in groups)
        check_partition(self.groups, names)
        group_of = {name: g for g, group in enumerate(self.groups) for name in group}
        self.trunk_of_task = [group_of[name] for name in names]
        self.shared_convs = shared_convs
        self.hparams = {
            "atom_fea_len": atom_fea_len,
            "h_fea_len": h_fea_len,
            "n_conv": n_conv,
            "n_h": n_h,
            "dmin": dmin,
            "dmax": dmax,
            "step": step,
            "shared_convs": shared_convs,
            "head_layers": dict(head_layers) if head_layers else None,
        }
        if shared_convs is None:
            self.trunks = nn.ModuleList(CGCNNTrunk(atom_fea_len, n_conv, dmin, dmax, step) for _ in self.groups)
            upper = 0
        else:  # trunks[0] is the shared stem
            self.trunks = nn.ModuleList([CGCNNTrunk(atom_fea_len, shared_convs, dmin, dmax, step)])
            upper = n_conv - shared_convs
        n_features = self.trunks[0].expansion.n_features
        # one (possibly empty) list of upper convolutions per group; empty lists add no state_dict keys
        self.branches = nn.ModuleList(
            nn.ModuleList(ConvLayer(atom_fea_len, n_features) for _ in range(upper)) for _ in self.groups
        )
        layers = head_layers or {}
        self.heads = nn.ModuleList(Head(atom_fea_len, h_fea_len, layers.get(t.name, n_h)) for t in self.tasks)
        self.register_buffer("is_binary", torch.tensor([t.kind == "binary" for t in self.tasks]), persistent=False)

    def group_features(self, batch: CrystalBatch) -> list[torch.Tensor]:
        """Pooled crystal features of each task group, in group order: n_groups x (B, F)."""
        if self.shared_convs is None:
            return [trunk(batch) for trunk in self.trunks]
        stem = self.trunks[0]
        atom_fea, edge_fea = stem.embed(batch)
        atom_fea = convolve(stem.convs, atom_fea, edge_fea, batch)
        return [
            mean_pool(
                convolve(branch, atom_fea, edge_fea, batch), batch.crystal_index, batch.n_crystals, batch.atom_weights
            )
            for branch in self.branches
        ]

    def crystal_features(self, batch: CrystalBatch) -> torch.Tensor:
        """Pooled features of every group, concatenated in group order: (B, n_groups * F)."""
        return torch.cat(self.group_features(batch), dim=1)

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns raw outputs (B, T) in task order: normalised regression values and binary logits.

        The heads run in the model's precision even under autocast (``train.precision: bfloat16`` autocasts the
        convolutions only): a bfloat16 output would round a normalised value near 2 to steps of 0.016.
        """
        features = self.group_features(batch)
        with torch.autocast(features[0].device.type, enabled=False):
            return torch.stack(
                [head(features[g]) for head, g in zip(self.heads, self.trunk_of_task, strict=True)], dim=1
            )

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that more than one task's output depends on (where task gradients can conflict)."""
        several = [len(group) > 1 for group in self.groups]
        if self.shared_convs is None:
            modules = [trunk for trunk, shared in zip(self.trunks, several, strict=True) if shared]
        else:
            modules = [self.trunks[0]] if len(self.tasks) > 1 else []
        modules += [branch for branch, shared in zip(self.branches, several, strict=True) if shared]
        return [p for module in modules for p in module.parameters() if p.requires_grad]

    def n_parameters(self) -> int:
        """Trainable parameter count (for comparing widths and sharing layouts at equal size)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

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
