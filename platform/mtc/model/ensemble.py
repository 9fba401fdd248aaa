"""K ensemble members in one forward pass: their frozen weights stacked on a leading member axis.

Every member has the same config (same sharing layout and widths), so each frozen tensor of ``InferenceModel``
stacks into a (K, ...) tensor and each matmul becomes one batched matmul (``baddbmm``) over the members. What
the members share is done once per batch: collation, the Gaussian expansion of the edges, the gather indices.
The edge term of all K members is one (E, G) x (G, K * 2F) matmul, wider and so faster per flop than K
narrow ones. Outputs equal running each member's ``InferenceModel`` alone, to float32 round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from mtc.data.batching import CrystalBatch
from mtc.model.cgcnn import EdgeIndex, mean_pool
from mtc.model.inference import FoldedConv, FrozenTrunk, InferenceModel, gated_sum
from mtc.model.multitask import MultiTaskCGCNN


class StackedConv:
    """K ``FoldedConv`` of the same width as one, on member-inner features (N, K, F).

    Atoms stay the leading axis, so each per-edge gather copies one contiguous row of all K members, and the
    edge term of every member is one (E, G) x (G, K * 2F) matmul whose output is already in (E, K, 2F) order.

    Attributes:
        centre_weight, neighbour_weight: (K, F, 2F); centre_bias: (K, 1, 2F); edge_weight: (G, K * 2F),
        member-major columns; scale, shift: (K, F).
    """

    def __init__(self, convs: Sequence[FoldedConv]) -> None:
        f2 = 2 * convs[0].atom_fea_len
        self.atom_fea_len = convs[0].atom_fea_len
        self.centre_weight = torch.stack([c.atom_weight[:, :f2] for c in convs])
        self.neighbour_weight = torch.stack([c.atom_weight[:, f2:] for c in convs])
        self.centre_bias = torch.stack([c.atom_bias[:f2] for c in convs]).unsqueeze(1)
        self.edge_weight = torch.cat([c.edge_weight for c in convs], dim=1)
        self.scale = torch.stack([c.scale for c in convs])
        self.shift = torch.stack([c.shift for c in convs])
        self.exp_gate = convs[0].exp_gate

    def __call__(self, atom_fea: torch.Tensor, edge_fea: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """Args: atom_fea (N, K, F), edge_fea (E, G). Returns: (N, K, F)."""
        pre = partial(self.pre_activations, atom_fea, edge_fea, edges)
        summed = gated_sum(pre, edges, atom_fea.shape[0], self.exp_gate)
        return F.softplus(summed.mul_(self.scale).add_(self.shift).add_(atom_fea))

    def pre_activations(self, atom_fea: torch.Tensor, edge_fea: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """Every member's ``[-f, c]`` of every edge, (E, K, 2F). Args: as ``__call__``."""
        n, k, f = atom_fea.shape
        by_member = atom_fea.transpose(0, 1)  # (K, N, F) view
        # (N, K * 2F) rows: a 2-D index_select is the fast gather (a 3-D one measured several times slower)
        centre = torch.baddbmm(self.centre_bias, by_member, self.centre_weight).transpose(0, 1).reshape(n, -1)
        neighbour = torch.bmm(by_member, self.neighbour_weight).transpose(0, 1).reshape(n, -1)
        gated = edges.add_centre_((edge_fea @ self.edge_weight).add_(neighbour.index_select(0, edges.src)), centre)
        return gated.view(-1, k, 2 * f)


def _mean_pool(
    atom_fea: torch.Tensor, crystal_index: torch.Tensor, n_crystals: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Args: atom_fea (N, K, F), crystal_index (N,), weights (N,) or None (``mean_pool``). Returns: (K, B, F);
    zeros for a crystal without atoms."""
    n, k, f = atom_fea.shape
    pooled = mean_pool(atom_fea.view(n, k * f), crystal_index, n_crystals, weights)
    return pooled.view(n_crystals, k, f).transpose(0, 1)


class StackedTrunk(FrozenTrunk):
    """K ``FrozenTrunk`` (stem + branches) as one; element tables stacked to (n_elements, K, F). Called like a
    ``FrozenTrunk``, it returns n_branches x (K, B, F)."""

    pool = staticmethod(_mean_pool)  # (N, K, F) atoms -> (K, B, F) crystals

    def __init__(self, trunks: Sequence[FrozenTrunk]) -> None:
        self.table = torch.stack([t.table for t in trunks], dim=1)
        self.pooled_dtype = trunks[0].pooled_dtype
        self.stem = [StackedConv(convs) for convs in zip(*(t.stem for t in trunks), strict=True)]
        self.branches = [
            [StackedConv(convs) for convs in zip(*branch, strict=True)]
            for branch in zip(*(t.branches for t in trunks), strict=True)
        ]


class StackedHead:
    """K heads of the same shape (softplus / Linear layers, see ``mtc.model.heads.Head``) as one."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for modules in zip(*(head.mlp for head in heads), strict=True):
            if isinstance(modules[0], nn.Linear):  # (K, in, out) weights, (K, 1, out) biases
                weight = torch.stack([m.weight.t() for m in modules])
                self.layers.append((weight, torch.stack([m.bias for m in modules]).unsqueeze(1)))
            else:
                self.layers.append(None)  # softplus

    def __call__(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        """Args: crystal_fea (K, B, F). Returns: (K, B)."""
        x = crystal_fea
        for layer in self.layers:
            x = F.softplus(x) if layer is None else torch.baddbmm(layer[1], x, layer[0])
        return x.squeeze(-1)


class EnsembleInference:
    """Frozen K-member ensemble (eval semantics, no autograd): collation and the edge expansion done once.

    Stacked, the members run as one batched pass (one kernel per operation for all K): what pays on a GPU, where
    a CGCNN forward pass at batch 256 is bound by kernel launches. On a CPU the work itself bounds it and grows
    K-fold either way, and the stacked pass's K-wide temporaries measured slower than the members one by one
    (``benchmarks/bench_ensemble.py``), so the default is stacked on CUDA only.

    Args:
        members: K >= 1 models built from the same config (same layout, widths and tasks), on one device.
        stacked: One batched pass (True) or the members one by one (False); None: stacked on CUDA.
        dtype: The convolutions' precision (see ``InferenceModel``).
    """

    @torch.no_grad()
    def __init__(
        self, members: Sequence[MultiTaskCGCNN], stacked: bool | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.members = [InferenceModel(m, dtype) for m in members]
        self.dtype = self.members[0].dtype
        self.n_members = len(self.members)
        self.expansion = self.members[0].expansion
        self.trunk_of_task = self.members[0].trunk_of_task
        self.stacked = next(members[0].parameters()).is_cuda if stacked is None else stacked
        if self.stacked:
            self.trunks = [StackedTrunk(trunks) for trunks in zip(*(f.trunks for f in self.members), strict=True)]
            self.heads = [StackedHead(heads) for heads in zip(*(f.heads for f in self.members), strict=True)]

    @torch.inference_mode()
    def __call__(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns raw outputs (K, B, T): member k's row is ``members[k].eval()(batch)``."""
        batch = self.members[0].orbit_batch(batch)  # the members share their layout, so their depth
        edge_fea = self.expansion(batch.edge_dist).to(self.dtype)
        if not self.stacked:
            return torch.stack(
                [_outputs(f.trunks, f.heads, self.trunk_of_task, batch, edge_fea, 1) for f in self.members]
            )
        return _outputs(self.trunks, self.heads, self.trunk_of_task, batch, edge_fea, 2)


def _outputs(trunks, heads, trunk_of_task, batch: CrystalBatch, edge_fea: torch.Tensor, dim: int) -> torch.Tensor:
    """Each task's head on its trunk's features, stacked on ``dim`` (1 for one member, 2 for stacked members)."""
    edges = EdgeIndex.of(batch)
    features = [pooled for trunk in trunks for pooled in trunk(batch, edge_fea, edges)]
    return torch.stack([head(features[g]) for head, g in zip(heads, trunk_of_task, strict=True)], dim=dim)
