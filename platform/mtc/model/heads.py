"""Per-task prediction heads on pooled crystal features (CGCNN's readout MLP)."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """softplus -> Linear(F -> h) -> softplus -> (n_h - 1) x [Linear(h -> h) + softplus] -> Linear(h -> 1).

    Args:
        atom_fea_len: F, the crystal feature width.
        h_fea_len: h, the hidden width.
        n_h: Number of hidden layers (>= 1).
    """

    def __init__(self, atom_fea_len: int = 64, h_fea_len: int = 128, n_h: int = 1) -> None:
        super().__init__()
        if n_h < 1:
            raise ValueError(f"n_h must be >= 1, got {n_h}")
        layers: list[nn.Module] = [nn.Softplus(), nn.Linear(atom_fea_len, h_fea_len), nn.Softplus()]
        for _ in range(n_h - 1):
            layers += [nn.Linear(h_fea_len, h_fea_len), nn.Softplus()]
        layers.append(nn.Linear(h_fea_len, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        """Args: crystal_fea (B, F). Returns: (B,)."""
        return self.mlp(crystal_fea).squeeze(-1)
