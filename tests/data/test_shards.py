"""Shard writing and reading with plain pyarrow: atomic publication, manifest, stale leftovers."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtc.config import FeaturizeConfig
from mtc.data.featurize import featurize_table
from mtc.data.shards import (
    MANIFEST,
    ShardError,
    ShardWriter,
    graph_schema,
    read_manifest,
    read_shards,
    remove_stale_staging,
    write_staged_shard,
)


@pytest.fixture(scope="module")
def graph_rows(demo_records) -> pa.Table:
    records = [{"id": r["id"], "source": "demo", "json": json.dumps(r)} for r in demo_records[:50]]
    return featurize_table(pa.Table.from_pylist(records), FeaturizeConfig(), ["band_gap"])


def stage(writer: ShardWriter, table: pa.Table, rows: int, labels=("band_gap",)) -> None:
    """Stage ``table`` in shards of ``rows`` rows, the last first (as tasks finish in any order)."""
    for start in reversed(range(0, table.num_rows, rows)):
        name = f"rows-{start}.parquet"
        write_staged_shard(writer.staging / name, table.slice(start, rows), list(labels))
        writer.add(name, min(rows, table.num_rows - start), order=start)


def test_shards_published_in_order_and_read_back_the_same_arrays(tmp_path, graph_rows):
    writer = ShardWriter(tmp_path)
    stage(writer, graph_rows, 16)
    manifest = writer.commit({"label_columns": ["band_gap"]})
    assert manifest["shards"] == [{"file": f"part-{k:05d}.parquet", "rows": n} for k, n in enumerate([16, 16, 16, 2])]
    back = read_shards(tmp_path)
    assert back.schema == graph_schema(["band_gap"])
    for column in back.schema.names:
        assert back.column(column).to_pylist() == graph_rows.column(column).to_pylist(), column
    first = pq.read_table(tmp_path / "part-00000.parquet")
    assert first.schema.field("edge_dist").type == pa.list_(pa.float32())
    assert not list(tmp_path.glob(".staging-*"))


def test_unfinished_run_is_never_trusted(tmp_path, graph_rows):
    stage(ShardWriter(tmp_path), graph_rows, 16)  # killed here: nothing committed
    with pytest.raises(ShardError, match="no finished graph shards"):
        read_shards(tmp_path)
    assert not list(tmp_path.glob("part-*.parquet"))
    remove_stale_staging(tmp_path)
    assert not list(tmp_path.glob(".staging-*"))


def test_failed_rerun_keeps_the_previous_shards(tmp_path, graph_rows):
    ShardWriter(tmp_path).commit({"label_columns": ["band_gap"]})
    first = ShardWriter(tmp_path)
    stage(first, graph_rows, 4096)
    first.commit({"label_columns": ["band_gap"]})
    second = ShardWriter(tmp_path)
    stage(second, graph_rows.slice(0, 3), 4096)
    second.abort()
    assert read_shards(tmp_path).num_rows == graph_rows.num_rows


def test_manifest_schema_version_checked(tmp_path):
    ShardWriter(tmp_path).commit({"label_columns": []})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["schema_version"] = 999
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="schema 999"):
        read_manifest(tmp_path)


def test_foreign_part_files_are_never_deleted(tmp_path):
    """A folder with part-*.parquet but no manifest (a Parquet dataset) is refused before any work."""
    foreign = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(ShardError, match=r"part-\*\.parquet file\(s\) \(part-00000.parquet\) but no manifest"):
        ShardWriter(tmp_path)
    assert pq.read_table(foreign).column("x").to_pylist() == [1, 2]


def test_commit_replaces_only_the_shards_its_manifest_names(tmp_path):
    rows = pa.Table.from_pylist(
        [{"id": str(i), "atomic_numbers": [1], "edge_src": [0], "edge_dst": [0], "edge_dist": [1.0]} for i in range(3)]
    )
    first = ShardWriter(tmp_path)
    stage(first, rows, 1, labels=())
    first.commit({})
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-00009.parquet")  # a file the manifest does not name
    second = ShardWriter(tmp_path)
    stage(second, rows, 4, labels=())
    second.commit({})
    assert sorted(p.name for p in tmp_path.glob("part-*")) == ["part-00000.parquet", "part-00009.parquet"]
    assert read_shards(tmp_path).num_rows == 3
