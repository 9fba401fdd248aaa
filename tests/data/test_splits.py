"""Deterministic id-based splits."""

from __future__ import annotations

import numpy as np

from mtc.data.splits import TEST, TRAIN, UNUSED, VAL, split_codes


def test_fractions_and_determinism(demo_records):
    ids = [r["id"] for r in demo_records]
    codes = split_codes(ids, 0.2, 0.2, seed=0)
    share = {c: float(np.mean(codes == c)) for c in (TRAIN, VAL, TEST)}
    assert abs(share[TRAIN] - 0.6) < 0.03 and abs(share[VAL] - 0.2) < 0.03 and abs(share[TEST] - 0.2) < 0.03
    assert np.array_equal(codes, split_codes(ids, 0.2, 0.2, seed=0))
    # the split of an id does not depend on which other ids are present or their order
    assert np.array_equal(split_codes(ids[::-1][:500], 0.2, 0.2, 0), codes[::-1][:500])
    assert not np.array_equal(codes, split_codes(ids, 0.2, 0.2, seed=1))


def test_train_fraction_subsamples_train_only(demo_records):
    ids = [r["id"] for r in demo_records]
    full = split_codes(ids, 0.2, 0.2, seed=3)
    half = split_codes(ids, 0.2, 0.2, seed=3, train_fraction=0.5)
    assert np.array_equal(full == VAL, half == VAL) and np.array_equal(full == TEST, half == TEST)
    kept = (half == TRAIN).sum() / (full == TRAIN).sum()
    assert abs(kept - 0.5) < 0.05
    assert set(np.unique(half[full == TRAIN])) == {TRAIN, UNUSED}
