"""Arrow graph rows -> one flat torch batch, vectorised over Arrow list offsets (no per-crystal loop)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import torch

from mtc.tasks import TaskSpec, task_targets


@dataclass
class CrystalBatch:
    """B crystals with N atoms and E directed edges in total, indices global to the batch.

    Attributes:
        atomic_numbers: long (N,).
        edge_src: long (E,), the neighbour j that sends the message.
        edge_dst: long (E,), the centre atom i that receives it.
        edge_dist: float32 (E,), distances in Å.
        crystal_index: long (N,), the crystal each atom belongs to.
        n_crystals: B.
        targets: float32 (B, T), 0 where missing.
        mask: bool (B, T), true where a label exists.
        ids: the B crystal ids.
        atom_weights: float32 (N,), how many of the crystals' atoms each row stands for in an orbit batch
            (``mtc.model.orbits``); None: one each.
    """

    atomic_numbers: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_dist: torch.Tensor
    crystal_index: torch.Tensor
    n_crystals: int
    targets: torch.Tensor
    mask: torch.Tensor
    ids: list[str]
    atom_weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n_crystals

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CrystalBatch:
        """Returns a copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def _list_column(table: pa.Table | pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (offsets int64 (B+1,) starting at 0, flat values) of a list column."""
    column = table.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} null rows")
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def collate_arrow(table: pa.Table | pa.RecordBatch, tasks: Sequence[TaskSpec] = ()) -> CrystalBatch:
    """Builds a batch from graph-shard rows.

    Args:
        table: B rows of the shard schema (``id``, ``atomic_numbers``, ``edge_src``, ``edge_dst``,
            ``edge_dist`` with crystal-local indices, and the tasks' label columns).
        tasks: T tasks; empty for inference (targets and mask are then (B, 0)).

    Returns:
        The batch, on the CPU.

    Raises:
        ValueError: on null rows, edge lists of unequal lengths or edge indices outside their crystal.
    """
    atom_offsets, atomic_numbers = _list_column(table, "atomic_numbers")
    edge_offsets, src = _list_column(table, "edge_src")
    dst_offsets, dst = _list_column(table, "edge_dst")
    dist_offsets, dist = _list_column(table, "edge_dist")
    if not (np.array_equal(edge_offsets, dst_offsets) and np.array_equal(edge_offsets, dist_offsets)):
        raise ValueError("edge_src, edge_dst and edge_dist must have the same length in every row")

    n_crystals = len(atom_offsets) - 1
    atom_counts = np.diff(atom_offsets)
    edge_counts = np.diff(edge_offsets)
    first_atom = np.repeat(atom_offsets[:-1], edge_counts)
    if src.size:
        n_local = np.repeat(atom_counts, edge_counts)
        if (src < 0).any() or (dst < 0).any() or (src >= n_local).any() or (dst >= n_local).any():
            raise ValueError("edge index outside its crystal")

    targets, mask = task_targets(table, tasks)
    return CrystalBatch(
        atomic_numbers=torch.from_numpy(atomic_numbers.astype(np.int64)),
        edge_src=torch.from_numpy(src.astype(np.int64) + first_atom),
        edge_dst=torch.from_numpy(dst.astype(np.int64) + first_atom),
        edge_dist=torch.from_numpy(dist.astype(np.float32)),
        crystal_index=torch.from_numpy(np.repeat(np.arange(n_crystals, dtype=np.int64), atom_counts)),
        n_crystals=n_crystals,
        targets=torch.from_numpy(targets),
        mask=torch.from_numpy(mask),
        ids=table.column("id").to_pylist(),
    )
