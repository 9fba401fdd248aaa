"""Atoms that no convolution can tell apart, computed once: *orbit batches*, for training and inference alike.

A CGCNN convolution updates an atom from its own features and the multiset of (neighbour features, edge distance)
over its edges. So two atoms of a crystal with the same element, whose edges carry the same distances to
neighbours that are themselves alike, leave every convolution with the same features: the atoms of one
symmetry orbit, wherever the graph builder gave their edges bitwise-equal distances. Colour refinement (1-WL)
finds them: atoms start coloured by (crystal, element); each round recolours an atom by its colour and the
multiset of (neighbour colour, distance bits) over its edges. After r rounds, atoms of one colour have the same
features after r convolutions, to float32 round-off (their sums are taken in another order). The forward pass
then runs on one atom per colour, its edges pointing at the colours of its neighbours, and mean pooling (and, in
training, BatchNorm's batch statistics: ``mtc.model.cgcnn.batch_norm``) weighs each by its number of atoms: the
same outputs and gradients from 2.1x fewer atoms and edges than mp36k's crystals hold.

Colours are 64-bit hashes (a multiset hashed as the sum of its mixed elements); two different neighbourhoods share
one with a probability of about 2^-64 per pair of atoms.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mtc.data.batching import CrystalBatch

# Odd 63-bit constants of splitmix64-style mixing (int64 products wrap, as intended).
_MUL1, _MUL2, _EDGE, _SELF = 0x3F58476D1CE4E5B9, 0x14057B7EF767814F, 0x1B873593, 0x5851F42D4C957F2D
# Keep the orbit batch only when it drops at least this share of the atoms: below it, building it costs more than
# the forward pass saves (a crystal without repeated neighbourhoods).
MIN_SAVING = 0.1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A bijective scramble of int64 values (xor-shift-multiply), so sums of mixed values hash multisets."""
    x = (x ^ (x >> 31)) * _MUL1
    x = (x ^ (x >> 29)) * _MUL2
    return x ^ (x >> 32)


def atom_colours(batch: CrystalBatch, rounds: int) -> torch.Tensor:
    """Colour classes of the batch's atoms after ``rounds`` of refinement, numbered in order of their first atom.

    Atoms of different crystals never share a colour. Returns: long (N,), values in [0, C).
    """
    return _refine(batch, rounds)[0]


def _refine(batch: CrystalBatch, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``atom_colours``, each colour's first atom: long (C,), ascending)."""
    colour = batch.crystal_index * 256 + batch.atomic_numbers
    distance_bits = batch.edge_dist.float().view(torch.int32).long()
    for _ in range(rounds):
        messages = _mix(colour.index_select(0, batch.edge_src) * _EDGE + distance_bits)
        received = torch.zeros_like(colour).index_add_(0, batch.edge_dst, messages)
        colour = _mix(colour * _SELF + received)
    _, inverse = torch.unique(colour, return_inverse=True)
    n = inverse.numel()
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long, device=inverse.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=inverse.device), "amin")
    first, order = first.sort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[inverse], first


def orbit_batch(batch: CrystalBatch, rounds: int, min_saving: float = MIN_SAVING) -> CrystalBatch:
    """``batch`` reduced to one atom per colour for a network of ``rounds`` convolutions one after another: C atoms
    (each colour's first) with ``atom_weights`` (C,), the atoms of each colour; their edges (grouped by centre as in
    the input) with ``edge_src`` pointing at colours; crystals, targets and ids as in the input. ``batch`` itself
    when that would drop less than ``min_saving`` of its atoms (0: always reduced), or is an orbit batch already."""
    n_atoms = batch.atomic_numbers.numel()
    if n_atoms == 0 or batch.atom_weights is not None:
        return batch
    colours, first = _refine(batch, rounds)
    n_colours = first.numel()
    if n_colours > (1.0 - min_saving) * n_atoms:
        return batch
    kept = torch.zeros(n_atoms, dtype=torch.bool, device=colours.device).index_fill_(0, first, True)
    edges = kept.index_select(0, batch.edge_dst)
    weights = torch.bincount(colours, minlength=n_colours).to(torch.float32)
    return replace(
        batch,
        atomic_numbers=batch.atomic_numbers.index_select(0, first),
        crystal_index=batch.crystal_index.index_select(0, first),
        edge_src=colours.index_select(0, batch.edge_src[edges]),
        edge_dst=colours.index_select(0, batch.edge_dst[edges]),
        edge_dist=batch.edge_dist[edges],
        atom_weights=weights,
    )
