"""Frozen inference form of a trained ``MultiTaskCGCNN``: BatchNorms folded, shared work done once per batch.

Same outputs as ``model.eval()(batch)`` to float32 round-off, with less work per batch:

- bn1 (eval: ``x * s + t``, ``s = weight / sqrt(running_var + eps)``) is folded into the conv's Linear:
  W_a, W_b, W_c and the bias are rescaled by ``s``, ``t`` joins the bias;
- bn2 is one precomputed scale and shift after the ``index_add_`` sum;
- the embedding Linear is applied to the element table once, at freezing: an atom's embedding is a row lookup;
- the gate ``sigmoid(f) * softplus(c)`` is ``log(1 + e^c) / (1 + e^-f)`` (``gate_``): the filter rows are negated at
  freezing, so one ``exp`` covers both halves of the (E, 2F) pre-activations, then one add, a log over half and a
  division, in place: 1.20x on the shipped model's whole forward against softplus and sigmoid
  (``bench_inference.py --shipped --batch-atoms 4096``; ``softplus``'s ``log1p`` alone cost more than this ``exp``
  and ``log``). ``log(1 + e^c)`` differs from softplus's
  ``log1p(e^c)`` by under 1e-7 in absolute value (an ulp of 1), round-off in sums of terms near 1; where ``e^c``
  overflows (c > 88 in float32) a convolution's sum is not finite and it is computed again the exact way;
- the Gaussian expansion is computed once per batch for every trunk and convolution; each convolution
  accumulates its edge term ``W_c u`` straight into the gathered atom terms (``addmm_``). One matmul of all
  the convolutions' concatenated edge weights, sliced per convolution, measured ~1.8x slower on that step
  (an (E, n_conv * 2F) temporary out of cache, then one more pass over it per convolution).

``dtype=torch.bfloat16`` runs the convolutions (weights, atom features, the edge expansion) in bfloat16; the
folding is done in the model's precision first, and pooling and the heads stay in it (a crystal's mean over many
atoms, and the last layers, keep their precision). An option, not the default: it moves predictions by a few
percent of the test MAE (``benchmarks/bench_inference.py --precision``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from mtc.data.batching import CrystalBatch
from mtc.model.cgcnn import CGCNNTrunk, ConvLayer, EdgeIndex, mean_pool
from mtc.model.multitask import MultiTaskCGCNN
from mtc.model.orbits import orbit_batch


def bn_scale_shift(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``bn(x) == x * scale + shift``. Returns: scale (C,), shift (C,)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class FoldedConv:
    """A ``ConvLayer`` with its BatchNorms folded in (eval semantics), computing pre-activations ``[-f, c]``.

    The bias joins the centre-atom term (N rows) rather than the edge term (E rows): the same sum, less work. The
    filter half's rows are negated (``s`` below includes the sign) for ``gate_``.

    Attributes:
        atom_weight: (F, 4F), ``[s * W_a ; s * W_b]`` transposed for ``atom_fea @ atom_weight``.
        atom_bias: (4F,), ``[s * b + t ; 0]``.
        edge_weight: (G, 2F), ``s * W_c`` transposed.
        scale, shift: (F,), bn2.
        exp_gate: ``gate_`` (True) or ``gate_exact`` always (the gate before it, for ``bench_inference.py``).
    """

    exp_gate = True

    def __init__(self, conv: ConvLayer, dtype: torch.dtype | None = None) -> None:
        f = conv.atom_fea_len
        scale1, shift1 = bn_scale_shift(conv.bn1)
        sign = torch.ones_like(scale1)
        sign[:f] = -1  # rows [0, F) give the filter f, [F, 2F) the core c
        weight = conv.fc_full.weight * (scale1 * sign).unsqueeze(1)
        self.atom_fea_len = f
        self.atom_weight = torch.cat([weight[:, :f], weight[:, f : 2 * f]], dim=0).t().contiguous()
        self.atom_bias = torch.cat([(conv.fc_full.bias * scale1 + shift1) * sign, torch.zeros_like(shift1)])
        self.edge_weight = weight[:, 2 * f :].t().contiguous()
        self.scale, self.shift = bn_scale_shift(conv.bn2)
        if dtype is not None:  # folded in the model's precision, then cast
            for name in ("atom_weight", "atom_bias", "edge_weight", "scale", "shift"):
                setattr(self, name, getattr(self, name).to(dtype))

    def __call__(self, atom_fea: torch.Tensor, edge_fea: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """Args: atom_fea (N, F), edge_fea (E, G). Returns: (N, F)."""
        pre = partial(self.pre_activations, atom_fea, edge_fea, edges)
        summed = gated_sum(pre, edges, atom_fea.shape[0], self.exp_gate)
        return F.softplus(summed.mul_(self.scale).add_(self.shift).add_(atom_fea))

    def pre_activations(self, atom_fea: torch.Tensor, edge_fea: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
        """``[-f, c]`` of every edge, (E, 2F)."""
        f2 = 2 * self.atom_fea_len
        per_atom = torch.addmm(self.atom_bias, atom_fea, self.atom_weight)
        gated = edges.add_centre_(per_atom[:, f2:].index_select(0, edges.src), per_atom[:, :f2])
        return gated.addmm_(edge_fea, self.edge_weight)


def gate_(pre: torch.Tensor) -> torch.Tensor:
    """``sigmoid(f) * softplus(c)`` as ``log(1 + e^c) / (1 + e^-f)``, in place.

    Args: pre (..., 2F), ``[-f, c]`` on the last axis (overwritten). Returns: (..., F), a view of ``pre``.
    """
    neg_filter, core = pre.exp_().add_(1).chunk(2, dim=-1)
    return core.log_().div_(neg_filter)


def gate_exact(pre: torch.Tensor) -> torch.Tensor:
    """``gate_`` with softplus and sigmoid, for pre-activations beyond ``exp``'s range. Args, returns: as ``gate_``."""
    neg_filter, core = pre.chunk(2, dim=-1)
    return F.softplus(core).mul_(neg_filter.neg_().sigmoid_())


def gated_sum(
    pre_activations: Callable[[], torch.Tensor], edges: EdgeIndex, n_atoms: int, exp_gate: bool = True
) -> torch.Tensor:
    """Each centre's sum of gated messages, (N, *S), from ``pre_activations()`` (E, *S2) (``[-f, c]`` last), with
    ``gate_``; computed again with ``gate_exact`` where that overflowed (a sum that is not finite: c > 88 in float32),
    and with it alone when ``exp_gate`` is False."""
    if exp_gate:
        summed = edges.sum_at_centre(gate_(pre_activations()), n_atoms)
        if bool(torch.isfinite(summed).all()):
            return summed
    return edges.sum_at_centre(gate_exact(pre_activations()), n_atoms)


class FrozenTrunk:
    """A stem (embedding + convolutions) and the per-group convolution branches on top of it.

    Args:
        trunk: The stem.
        branches: Convolution lists applied to the stem output, one per task group; ``[[]]`` pools the stem.
        dtype: The convolutions' precision (default: the trunk's); pooled features come back in the trunk's.
    """

    def __init__(self, trunk: CGCNNTrunk, branches: list[list[ConvLayer]], dtype: torch.dtype | None = None) -> None:
        table = trunk.embedding(trunk.element_table)  # (n_elements, F)
        self.pooled_dtype = table.dtype
        self.table = table.to(dtype or table.dtype)
        self.stem = [FoldedConv(c, dtype) for c in trunk.convs]
        self.branches = [[FoldedConv(c, dtype) for c in branch] for branch in branches]

    @property
    def depth(self) -> int:
        """Convolutions from the embedding to the deepest pooled features."""
        return len(self.stem) + max(len(branch) for branch in self.branches)

    def __call__(self, batch: CrystalBatch, edge_fea: torch.Tensor, edges: EdgeIndex) -> list[torch.Tensor]:
        """Args: edge_fea (E, G), the batch's Gaussian expansion. Returns: n_branches x (B, F)."""
        atom_fea = self.table.index_select(0, batch.atomic_numbers)
        for conv in self.stem:
            atom_fea = conv(atom_fea, edge_fea, edges)
        pooled = []
        for branch in self.branches:
            branch_fea = atom_fea
            for conv in branch:
                branch_fea = conv(branch_fea, edge_fea, edges)
            fea = branch_fea.to(self.pooled_dtype)
            pooled.append(self.pool(fea, batch.crystal_index, batch.n_crystals, batch.atom_weights))
        return pooled

    pool = staticmethod(mean_pool)  # (N, F) atoms -> (B, F) crystals


class InferenceModel:
    """Frozen copy of a ``MultiTaskCGCNN`` for prediction only (eval semantics, no autograd).

    Later changes to ``model`` do not reach it: freeze again after training or loading weights. Outputs are raw,
    as ``model(batch)``: apply ``model.to_physical``.

    Args:
        model: Any sharing layout; its device and dtype are kept.
        dtype: The convolutions' precision, e.g. ``torch.bfloat16`` (default: the model's); outputs are the model's.
        regular_edges: Use ``EdgeIndex``'s broadcasts and reshapes where a batch's edges are regular (False: gathers
            and scatters always, the layout before them, kept for ``benchmarks/bench_inference.py``).
        exp_gate: ``gate_`` in every convolution (False: softplus and sigmoid, the gate before it, for the same).
        orbits: Run each batch as its orbit batch, one atom per set of atoms no convolution tells apart
            (``mtc.model.orbits``; False: every atom, the path before it, for the same).
    """

    @torch.no_grad()
    def __init__(
        self,
        model: MultiTaskCGCNN,
        dtype: torch.dtype | None = None,
        regular_edges: bool = True,
        exp_gate: bool = True,
        orbits: bool = True,
    ) -> None:
        self.regular_edges = regular_edges
        self.orbits = orbits
        if model.shared_convs is None:
            self.trunks = [FrozenTrunk(trunk, [[]], dtype) for trunk in model.trunks]
        else:
            self.trunks = [FrozenTrunk(model.trunks[0], [list(branch) for branch in model.branches], dtype)]
        for trunk in self.trunks:
            for conv in [*trunk.stem, *(conv for branch in trunk.branches for conv in branch)]:
                conv.exp_gate = exp_gate
        self.dtype = self.trunks[0].table.dtype
        # every trunk is built with the same dmin / dmax / step: one expansion serves them all
        self.expansion = copy.deepcopy(model.trunks[0].expansion)
        self.heads = copy.deepcopy(model.heads).eval()
        self.trunk_of_task = model.trunk_of_task
        self.depth = max(trunk.depth for trunk in self.trunks)

    def orbit_batch(self, batch: CrystalBatch) -> CrystalBatch:
        """``batch`` as its orbit batch for this model's depth (kept whole when ``orbits`` is False)."""
        return orbit_batch(batch, self.depth) if self.orbits else batch

    @torch.inference_mode()
    def group_features(self, batch: CrystalBatch) -> list[torch.Tensor]:
        """Pooled crystal features of each task group, in group order, as ``model.eval().group_features``.

        Returns: n_groups x (B, F).
        """
        batch = self.orbit_batch(batch)
        edge_fea = self.expansion(batch.edge_dist).to(self.dtype)
        edges = EdgeIndex.of(batch, self.regular_edges)
        return [pooled for trunk in self.trunks for pooled in trunk(batch, edge_fea, edges)]

    @torch.inference_mode()
    def __call__(self, batch: CrystalBatch) -> torch.Tensor:
        """Returns raw outputs (B, T) in task order, as ``model.eval()(batch)``."""
        features = self.group_features(batch)
        return torch.stack([head(features[g]) for head, g in zip(self.heads, self.trunk_of_task, strict=True)], dim=1)
