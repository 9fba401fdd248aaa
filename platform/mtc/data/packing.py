"""Crystals cut into consecutive batches by work (atoms) or by count, never dropped or reordered.

A CGCNN batch costs memory and time in proportion to its atoms and edges, not its crystals: each atom keeps at most
``max_neighbors`` edges, so a batch of at most A atoms holds at most A · max_neighbors edges whatever its crystals.
Packing by atoms bounds a batch of large cells as tightly as one of small cells, and lets small cells fill a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def pack(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Greedy cut points of consecutive batches whose sizes sum to at most ``budget``.

    Each batch takes rows in order while its total stays within the budget; a row larger than the budget is a batch
    of its own. Greedy packing is prefix-stable: appending rows can change only the last batch.

    Args:
        sizes: (n,) non-negative integers (atoms per crystal; ones to cut by count).
        budget: the most a batch may hold, ≥ 1.

    Returns:
        cuts: (K+1,) int64, cuts[0] = 0, cuts[K] = n; batch k is rows cuts[k]:cuts[k+1], none of them empty.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget < 1:
        raise ValueError(f"batch budget {budget}: give at least 1")
    if sizes.size and sizes.min() < 0:
        raise ValueError("batch sizes must be non-negative")
    total = np.concatenate([[0], np.cumsum(sizes)])  # total[i]: the size of rows 0..i-1
    cuts = [0]
    while cuts[-1] < sizes.size:
        start = cuts[-1]
        end = int(np.searchsorted(total, total[start] + budget, side="right")) - 1  # the last end within budget
        cuts.append(max(end, start + 1))
    return np.asarray(cuts, dtype=np.int64)


def atom_counts(graphs: pa.Table) -> np.ndarray:
    """(B,) int64 atoms of each graph row (0 for a rejected row)."""
    return pc.list_value_length(graphs.column("atomic_numbers")).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class Batching:
    """How a pass cuts crystals into batches: at most ``atoms`` atoms per batch (a larger crystal alone), or, with
    ``atoms`` None, ``crystals`` crystals per batch."""

    atoms: int | None = None
    crystals: int = 256

    def __post_init__(self):
        if (self.atoms is not None and self.atoms < 1) or self.crystals < 1:
            raise ValueError(f"{self}: batch budgets are at least 1")

    def cuts(self, atoms: np.ndarray) -> np.ndarray:
        """Cut points (K+1,) of crystals with ``atoms`` (n,) atoms each, as ``pack``."""
        if self.atoms is None:
            return pack(np.ones(len(atoms), dtype=np.int64), self.crystals)
        return pack(atoms, self.atoms)
