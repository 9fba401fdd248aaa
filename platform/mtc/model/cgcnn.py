"""CGCNN trunk on flat edge lists: Gaussian distance expansion, gated convolutions, mean pooling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mtc.data.batching import CrystalBatch
from mtc.elements import element_table


class GaussianExpansion(nn.Module):
    """Expands distances on Gaussians ``exp(-(d - mu)^2 / step^2)`` centred on ``dmin, dmin+step, .., dmax``.

    Values below ``exp(-cutoff)`` (4e-18 at the default 40) are set to exactly 0: left alone, float32 turns
    them into denormals, which slow the CPU matmuls that consume them by an order of magnitude.

    Args:
        dmin: First centre in Å.
        dmax: Last centre in Å.
        step: Spacing of the centres and width of each Gaussian, in Å.
        cutoff: Exponent below which a Gaussian is zero.
    """

    def __init__(self, dmin: float = 0.0, dmax: float = 8.0, step: float = 0.2, cutoff: float = 40.0) -> None:
        super().__init__()
        if step <= 0 or dmax <= dmin:
            raise ValueError(f"need dmin < dmax and step > 0, got {dmin}, {dmax}, {step}")
        n_centres = round((dmax - dmin) / step) + 1
        self.register_buffer("centres", dmin + step * torch.arange(n_centres, dtype=torch.float32), persistent=False)
        self.step = step
        self.cutoff = cutoff

    @property
    def n_features(self) -> int:
        """Number of Gaussians G (41 for the CGCNN defaults)."""
        return self.centres.numel()

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """Args: dist (E,). Returns: (E, G)."""
        exponent = ((dist.unsqueeze(-1) - self.centres) / self.step).square_()
        far = exponent > self.cutoff
        return torch.exp(exponent.clamp_(max=self.cutoff).neg_()).masked_fill_(far, 0.0)


@dataclass(frozen=True)
class EdgeIndex:
    """A batch's edges j -> i, and whether they are *regular*: every centre i owns exactly ``degree`` edges, rows
    ``[i * degree, (i + 1) * degree)`` (what the graph builder gives every crystal with ``max_neighbors`` neighbours
    in reach: all of mp36k). Regular edges take a centre's term by broadcasting, not by a gather, and sum messages by
    a reshape, not by a scatter. The frozen forward uses it (1.27-1.51x crystals/s); the training ``ConvLayer`` does
    not: with autograd it gained nothing eager and compiled measured 1.25x slower per conv step than gather and scatter.

    Attributes:
        src, dst: long (E,), neighbour j and centre i of each edge.
        degree: k when regular, else None.
    """

    src: torch.Tensor
    dst: torch.Tensor
    degree: int | None

    @classmethod
    def of(cls, batch: CrystalBatch, detect_regular: bool = True) -> EdgeIndex:
        """``detect_regular=False`` takes every batch as irregular (gathers and scatters: for benchmarks)."""
        dst, n_atoms = batch.edge_dst, batch.atomic_numbers.numel()
        degree = dst.numel() // n_atoms if n_atoms else 0
        regular = detect_regular and degree > 0 and degree * n_atoms == dst.numel()
        if regular:
            regular = torch.equal(dst, torch.arange(n_atoms, device=dst.device).repeat_interleave(degree))
        return cls(batch.edge_src, dst, degree if regular else None)

    def add_centre_(self, edge_values: torch.Tensor, centre_values: torch.Tensor) -> torch.Tensor:
        """``edge_values[e] += centre_values[dst[e]]`` in place. Args: (E, C), (N, C). Returns: edge_values."""
        if self.degree is None:
            return edge_values.add_(centre_values.index_select(0, self.dst))
        n = centre_values.shape[0]
        edge_values.view(n, self.degree, -1).add_(centre_values.unsqueeze(1))
        return edge_values

    def sum_at_centre(self, messages: torch.Tensor, n_atoms: int) -> torch.Tensor:
        """Sum of each centre's messages. Args: messages (E, *S). Returns: (N, *S)."""
        if self.degree is None:
            return messages.new_zeros(n_atoms, *messages.shape[1:]).index_add_(0, self.dst, messages)
        return messages.view(n_atoms, self.degree, *messages.shape[1:]).sum(1)


class ConvLayer(nn.Module):
    """CGCNN gated graph convolution.

    ``z_ij = [v_i || v_j || u_ij]``, ``(f, c) = BN(W z_ij + b)``,
    ``v_i' = softplus(v_i + BN(sum_j sigmoid(f) * softplus(c)))`` over the edges j -> i.
    ``W`` is one Linear(2F+G -> 2F) as in CGCNN, applied in split form ``W_a v_i + W_b v_j + W_c u_ij``:
    the atom terms are computed once per atom and gathered per edge.

    Args:
        atom_fea_len: F.
        nbr_fea_len: G.
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(
        self,
        atom_fea: torch.Tensor,
        edge_fea: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        atom_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: atom_fea (N, F), edge_fea (E, G), edge_src / edge_dst long (E,); atom_weights (N,), the atoms each
        row stands for in an orbit batch (``mtc.model.orbits``: BatchNorm's statistics weigh rows and edges by
        them), None for one each. Returns: (N, F)."""
        f = self.atom_fea_len
        weight = self.fc_full.weight
        # rows [0, 2F): W_a (centre i), rows [2F, 4F): W_b (neighbour j)
        per_atom = F.linear(atom_fea, torch.cat([weight[:, :f], weight[:, f : 2 * f]], dim=0))
        gated = (
            per_atom[:, : 2 * f].index_select(0, edge_dst)
            + per_atom[:, 2 * f :].index_select(0, edge_src)
            + F.linear(edge_fea, weight[:, 2 * f :], self.fc_full.bias)
        )
        edge_weights = None if atom_weights is None else atom_weights.index_select(0, edge_dst)
        filt, core = batch_norm(self.bn1, gated, edge_weights).chunk(2, dim=1)
        message = torch.sigmoid(filt) * F.softplus(core)
        # Under bfloat16 autocast the per-edge work runs in bfloat16; the sums and the atom stream keep atom_fea's
        # precision (a no-op cast in float32).
        summed = torch.zeros_like(atom_fea).index_add_(0, edge_dst, message.to(atom_fea.dtype))
        return F.softplus(atom_fea + batch_norm(self.bn2, summed, atom_weights))


def compile_convolutions(model: nn.Module) -> int:
    """Compiles every ``ConvLayer`` of ``model`` in place with ``torch.compile(dynamic=True)``; returns how many.

    Inductor fuses each convolution's per-edge work (two gathers, the adds, BatchNorm, the gate, the scatter) into a
    few passes over the (E, 2F) edge tensors, forward and backward: the same function to float32 round-off. Shapes
    are symbolic, so batches of any size reuse one compiled graph per mode (training, eval). The parameters' names
    are unchanged: a state_dict loads into an uncompiled model. Backward buffers are not donated (a process-wide
    setting), so a graph can be kept for several backward passes (PCGrad's one per task).
    """
    from torch._functorch import config as functorch_config

    functorch_config.donated_buffer = False
    convs = [module for module in model.modules() if isinstance(module, ConvLayer)]
    for conv in convs:
        conv.compile(dynamic=True)
    return len(convs)


def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(x)``, with training statistics weighted by ``weights``, and a training batch of a single row on the
    running statistics.

    One row has no variance to normalise by (BatchNorm raises); a batch of one one-atom crystal is legal input.
    With ``weights`` (an orbit batch: each row stands for that many rows of the whole batch) the batch mean and
    variance, and the running statistics' update, are those of the whole batch, to round-off.

    Args: x (R, C), weights (R,) or None. Returns: (R, C).
    """
    if bn.training and x.shape[0] < 2:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if weights is None or not bn.training:
        return bn(x)
    total = weights.sum()
    share = (weights / total).unsqueeze(1).to(torch.float32)
    mean = (x * share).sum(0)
    centred = x - mean
    var = (centred.square() * share).sum(0)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * (total / (total - 1)), momentum)
    return (centred * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias).to(x.dtype)


def mean_pool(
    atom_fea: torch.Tensor, crystal_index: torch.Tensor, n_crystals: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of atom features per crystal.

    Args:
        atom_fea: (N, F).
        crystal_index: long (N,).
        n_crystals: B.
        weights: float32 (N,), how many atoms each row stands for (an orbit batch: ``mtc.model.orbits``); None: 1.

    Returns:
        (B, F); zeros for a crystal without atoms.
    """
    if weights is not None:
        atom_fea = atom_fea * weights.to(atom_fea.dtype).unsqueeze(1)
        counts = weights.new_zeros(n_crystals).index_add_(0, crystal_index, weights)
    else:
        counts = torch.bincount(crystal_index, minlength=n_crystals)
    sums = atom_fea.new_zeros(n_crystals, atom_fea.shape[1]).index_add_(0, crystal_index, atom_fea)
    return sums / counts.clamp_(min=1).unsqueeze(1).to(atom_fea.dtype)


def convolve(
    convs: Iterable[ConvLayer], atom_fea: torch.Tensor, edge_fea: torch.Tensor, batch: CrystalBatch
) -> torch.Tensor:
    """Applies ``convs`` in order. Args: atom_fea (N, F), edge_fea (E, G). Returns: (N, F)."""
    for conv in convs:
        atom_fea = conv(atom_fea, edge_fea, batch.edge_src, batch.edge_dst, batch.atom_weights)
    return atom_fea


class CGCNNTrunk(nn.Module):
    """Element table -> Linear(92 -> F) -> n_conv gated convolutions -> mean pooling.

    The element table is a persistent buffer, so a state_dict carries the features it was trained with.

    Args:
        atom_fea_len: F.
        n_conv: Number of convolutions.
        dmin: First Gaussian centre (Å).
        dmax: Last Gaussian centre (Å).
        step: Gaussian spacing and width (Å).
    """

    def __init__(
        self, atom_fea_len: int = 64, n_conv: int = 3, dmin: float = 0.0, dmax: float = 8.0, step: float = 0.2
    ) -> None:
        super().__init__()
        table = torch.from_numpy(element_table())
        self.register_buffer("element_table", table)
        self.expansion = GaussianExpansion(dmin, dmax, step)
        self.embedding = nn.Linear(table.shape[1], atom_fea_len)
        self.convs = nn.ModuleList(ConvLayer(atom_fea_len, self.expansion.n_features) for _ in range(n_conv))

    def embed(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns embedded atom features (N, F) in the model's precision (also under autocast) and expanded edge
        distances (E, G)."""
        table = self.element_table
        return self.embedding(table[batch.atomic_numbers]).to(table.dtype), self.expansion(batch.edge_dist)

    def atom_features(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns atom features after the last convolution, (N, F)."""
        atom_fea, edge_fea = self.embed(batch)
        return convolve(self.convs, atom_fea, edge_fea, batch)

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns crystal features, (B, F)."""
        return mean_pool(self.atom_features(batch), batch.crystal_index, batch.n_crystals, batch.atom_weights)
