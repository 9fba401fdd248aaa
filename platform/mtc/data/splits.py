"""Train/val/test assignment from a seed and each crystal's id: stable across runs, machines and shard layouts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "test": TEST}


def _uniform(ids: Sequence[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per id, from blake2b(salt:id): (n,) float64."""
    return (
        np.fromiter(
            (int.from_bytes(hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=8).digest(), "little") for i in ids),
            dtype=np.float64,
            count=len(ids),
        )
        / 2.0**64
    )


def split_codes(ids: Sequence[str], val: float, test: float, seed: int, train_fraction: float = 1.0) -> np.ndarray:
    """Split of each id: TRAIN, VAL, TEST, or UNUSED (a training row left out by ``train_fraction``).

    Val and test depend only on (seed, id, val, test), never on ``train_fraction``, so data-efficiency
    runs are evaluated on the same crystals.

    Returns:
        int8 (n,).
    """
    u = _uniform(ids, f"split-{seed}")
    codes = np.where(u < test, TEST, np.where(u < test + val, VAL, TRAIN)).astype(np.int8)
    if train_fraction < 1.0:
        dropped = (codes == TRAIN) & (_uniform(ids, f"subsample-{seed}") >= train_fraction)
        codes[dropped] = UNUSED
    return codes


def bootstrap_counts(ids: Sequence[str], seed: int) -> np.ndarray:
    """Poisson bootstrap: how many times each id is drawn (Poisson(1), from a hash of seed and id).

    Each row's count is independent of the others, so shards and batches resample alike wherever they are read;
    the resample's size is the split's on average.

    Returns:
        int64 (n,) counts >= 0.
    """
    from scipy.stats import poisson

    return np.maximum(poisson.ppf(_uniform(ids, f"bootstrap-{seed}"), 1.0), 0).astype(np.int64)
