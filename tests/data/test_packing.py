"""Greedy packing of crystals into batches by work: every row once, in order, within budget, no batch left short."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from mtc.data.packing import Batching, pack


def check_packing(sizes: np.ndarray, budget: int, cuts: np.ndarray) -> None:
    batches = [np.arange(a, b) for a, b in pairwise(cuts)]
    assert np.array_equal(np.concatenate(batches) if batches else np.zeros(0), np.arange(len(sizes)))  # once, in order
    for k, rows in enumerate(batches):
        assert len(rows) > 0
        total = sizes[rows].sum()
        assert total <= budget or len(rows) == 1  # over budget only as a lone oversize crystal
        if k + 1 < len(batches):  # greedy: the next row did not fit, so no batch is cut short
            assert total + sizes[cuts[k + 1]] > budget


@pytest.mark.parametrize("seed", range(6))
def test_pack_keeps_every_row_once_in_order_within_budget(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    sizes = rng.integers(0, 60, n)  # 0: a rejected row, still a row
    sizes[rng.random(n) < 0.05] = rng.integers(100, 2000)  # a few cells above the budget
    budget = int(rng.integers(1, 500))
    check_packing(sizes, budget, pack(sizes, budget))


def test_pack_edge_cases():
    assert pack(np.zeros(0, np.int64), 10).tolist() == [0]
    assert pack([5, 5, 5], 10).tolist() == [0, 2, 3]
    assert pack([11, 1, 11], 10).tolist() == [0, 1, 2, 3]  # each oversize cell alone, the small one between them
    assert pack([0, 0, 10, 0, 1], 10).tolist() == [0, 4, 5]  # zeros ride along
    with pytest.raises(ValueError, match="at least 1"):
        pack([1], 0)
    with pytest.raises(ValueError, match="non-negative"):
        pack([1, -1], 5)


def test_batching_cuts_by_atoms_or_by_count():
    atoms = np.array([30, 30, 30, 500, 2, 2])
    assert Batching(atoms=64).cuts(atoms).tolist() == [0, 2, 3, 4, 6]
    assert Batching(crystals=4).cuts(atoms).tolist() == [0, 4, 6]
    with pytest.raises(ValueError, match="at least 1"):
        Batching(atoms=0)
