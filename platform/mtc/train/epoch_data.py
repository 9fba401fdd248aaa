"""Where an epoch's batches come from: a split a worker holds in its own memory, or Ray Data each epoch.

When the training and validation splits fit ``WORKER_MEMORY_BYTES``, every rank reads the whole training split
once (not a Ray Data shard) and holds its rows as one Arrow table; each epoch then draws its batches from a
permutation seeded by (seed, epoch), the same on every rank, of which rank r takes every world-th crystal
(``torch.utils.data.DistributedSampler``'s scheme): the ranks' crystals are disjoint, together they are the
whole split but for fewer than ``world`` crystals, and the order is new each epoch and the same after a resume.
Each rank collates its share of the validation batches once (every world-th) and evaluates it every epoch
without collating again.

With ``batch_atoms`` (``TrainConfig``) each rank packs its share, in that order, into batches of at most that many
atoms (``mtc.data.packing``). Shares of equal length pack into different numbers of batches, and a rank with an
extra step would wait forever in an all-reduce the others never join: every rank packs every rank's share (each
holds the whole split, the permutation is the same everywhere), drops each share's last, unfilled batch, and all
take the smallest count. The crystals left out differ from epoch to epoch, as ``drop_last`` does with counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa

from mtc.data.batching import CrystalBatch, collate_arrow
from mtc.data.packing import Batching, atom_counts
from mtc.model.orbits import orbit_batch
from mtc.tasks import TaskSpec

# Arrow bytes of the training plus validation split that each worker may hold (all of mp36k: 137 MiB).
WORKER_MEMORY_BYTES = 2 * 2**30


def fits_worker_memory(train_bytes: int, val_bytes: int) -> bool:
    """True when a worker can hold the training and validation splits (in-memory Arrow bytes)."""
    return train_bytes + val_bytes <= WORKER_MEMORY_BYTES


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's crystal indices for ``epoch``, in training order: (n // world,) int64.

    One permutation of range(n) per (seed, epoch), identical on every rank; rank r takes positions r, r + world,
    ... of its first n // world * world entries, so every rank gets as many crystals as the others.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[: n // world * world][rank::world]


def arrow_batches(tables, tasks: Sequence[TaskSpec], device, orbit_rounds: int | None = None) -> Iterator[CrystalBatch]:
    """Collated ``tables`` (Arrow batches of shard rows), on ``device``; as orbit batches for a model of
    ``orbit_rounds`` convolutions one after another when given (``mtc.model.orbits``: the same losses, gradients
    and BatchNorm statistics, from each set of alike atoms once)."""
    for table in tables:
        batch = collate_arrow(table, tasks).to(device)
        yield batch if orbit_rounds is None else orbit_batch(batch, orbit_rounds, min_saving=0.0)


@dataclass
class SplitInMemory:
    """One split's rows in one Arrow table (the shard schema)."""

    table: pa.Table
    atoms: np.ndarray = field(init=False)  # (n,) int64 atoms per crystal

    def __post_init__(self):
        self.atoms = atom_counts(self.table) if self.table.num_columns else np.zeros(0, np.int64)

    @classmethod
    def read(cls, iterator) -> SplitInMemory:
        """Every row of a Ray Data iterator (or Dataset), read once."""
        tables = list(iterator.iter_batches(batch_size=None, batch_format="pyarrow"))
        return cls(pa.concat_tables(tables).combine_chunks() if tables else pa.table({}))

    def __len__(self) -> int:
        return self.table.num_rows

    def batches(self, order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[pa.Table]:
        """The rows in ``order``, ``batch_size`` at a time (a last partial batch unless ``drop_last``)."""
        end = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, end, batch_size):
            yield self.table.take(order[start : start + batch_size])

    def epoch_batches(self, seed: int, epoch: int, rank: int, world: int, batching: Batching) -> Iterator[pa.Table]:
        """This rank's training batches of ``epoch``, as many as every other rank's (see the module docstring)."""
        order = epoch_order(len(self), seed, epoch, rank, world)
        if batching.atoms is None:
            yield from self.batches(order, batching.crystals, drop_last=True)
            return
        cuts = batching.cuts(self.atoms[order])
        steps = min(self._filled(batching, seed, epoch, r, world) for r in range(world))
        for first, end in pairwise(cuts[: steps + 1]):
            yield self.table.take(order[first:end])

    def _filled(self, batching: Batching, seed: int, epoch: int, rank: int, world: int) -> int:
        """Batches of ``rank``'s share but its last, unfilled one (kept when it is the only one)."""
        n_batches = len(batching.cuts(self.atoms[epoch_order(len(self), seed, epoch, rank, world)])) - 1
        return max(n_batches - 1, min(n_batches, 1))

    def collated(
        self,
        batching: Batching,
        tasks: Sequence[TaskSpec],
        device,
        rank: int = 0,
        world: int = 1,
        orbit_rounds: int | None = None,
    ) -> list[CrystalBatch]:
        """The rows in table order, cut by ``batching``, and of those batches ``rank``'s share (``rank``,
        ``rank + world``, ...; all of them by default), collated once (for evaluation; ``orbit_rounds`` as in
        ``arrow_batches``)."""
        cuts = batching.cuts(self.atoms)
        tables = (self.table.slice(first, end - first) for first, end in list(pairwise(cuts))[rank::world])
        return list(arrow_batches(tables, tasks, device, orbit_rounds))
