"""How featurize cuts its input into blocks (a task and a shard each): pure functions, no Ray."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from mtc.config import FeaturizeConfig
from mtc.data.featurize import FIRST_ROW, _blocks, rows_per_block


@pytest.mark.parametrize("n_rows", [1, 25, 600, 10_000, 36_737, 1_000_000])
@pytest.mark.parametrize("n_workers", [1, 2, 7, 64])
def test_blocks_come_in_whole_rounds_within_the_shard_cap(n_rows, n_workers):
    config = FeaturizeConfig()
    rows = rows_per_block(n_rows, n_workers, config)
    assert config.batch_size <= rows <= config.rows_per_shard
    # every worker gets as many blocks, unless the input is too small to give each a block of batch_size rows
    assert math.ceil(n_rows / rows) % n_workers == 0 or rows == config.batch_size


def test_two_workers_get_one_block_each_up_to_the_cap():
    config = FeaturizeConfig(rows_per_shard=16_384)
    assert rows_per_block(10_000, 2, config) == 5_000
    assert rows_per_block(36_737, 2, config) == 9_185  # two rounds of two
    assert rows_per_block(600, 2, FeaturizeConfig(rows_per_shard=256)) == 150
    assert rows_per_block(10, 2, config) == config.batch_size  # one small block


def test_blocks_cut_across_chunks_and_know_their_first_row():
    chunks = [pa.table({"id": [f"{c}-{i}" for i in range(n)]}) for c, n in enumerate([4, 4, 3])]
    other = pa.table({"id": ["x-0", "x-1"], "extra": [1, 2]})  # another schema (a second Parquet file) is cut apart
    blocks = _blocks([*chunks, other], rows=5)
    assert [b.num_rows for b in blocks] == [5, 5, 1, 2]
    assert [b.column(FIRST_ROW).unique().to_pylist() for b in blocks] == [[0], [5], [10], [11]]
    ids = [i for b in blocks for i in b.column("id").to_pylist()]
    assert ids == [i for t in [*chunks, other] for i in t.column("id").to_pylist()]
