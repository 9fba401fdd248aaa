"""collate_arrow against a slow per-crystal reference on real crystals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtc.data.batching import CrystalBatch, collate_arrow
from mtc.tasks import as_tasks
from tests.model.conftest import SCHEMA, demo_rows, graph_table

TASKS = as_tasks(
    [{"name": "formation_energy_per_atom"}, {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"}]
)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rows = demo_rows(16)
    rows[2]["formation_energy_per_atom"] = None
    rows[5]["band_gap"] = None
    return graph_table(rows)


def reference(table: pa.Table) -> dict[str, np.ndarray]:
    """Per-crystal Python loop, the obvious way."""
    out: dict[str, list] = {k: [] for k in ("z", "src", "dst", "dist", "crystal", "targets", "mask")}
    start = 0
    for b, row in enumerate(table.to_pylist()):
        n = len(row["atomic_numbers"])
        out["z"] += row["atomic_numbers"]
        out["src"] += [start + j for j in row["edge_src"]]
        out["dst"] += [start + i for i in row["edge_dst"]]
        out["dist"] += row["edge_dist"]
        out["crystal"] += [b] * n
        fe, gap = row["formation_energy_per_atom"], row["band_gap"]
        out["targets"].append([fe or 0.0, float(gap == 0) if gap is not None else 0.0])
        out["mask"].append([fe is not None, gap is not None])
        start += n
    return {k: np.array(v) for k, v in out.items()}


def assert_matches(batch: CrystalBatch, table: pa.Table) -> None:
    ref = reference(table)
    assert batch.n_crystals == len(batch) == table.num_rows
    assert batch.ids == table.column("id").to_pylist()
    for name, key in [
        ("atomic_numbers", "z"),
        ("edge_src", "src"),
        ("edge_dst", "dst"),
        ("crystal_index", "crystal"),
        ("mask", "mask"),
    ]:
        np.testing.assert_array_equal(getattr(batch, name).numpy(), ref[key], err_msg=name)
    np.testing.assert_array_equal(batch.edge_dist.numpy(), ref["dist"].astype(np.float32))
    np.testing.assert_array_equal(batch.targets.numpy(), ref["targets"].astype(np.float32))
    for name in ("atomic_numbers", "edge_src", "edge_dst", "crystal_index"):
        assert getattr(batch, name).dtype == torch.long
    assert batch.edge_dist.dtype == batch.targets.dtype == torch.float32
    assert batch.mask.dtype == torch.bool


def test_matches_reference(table: pa.Table) -> None:
    assert_matches(collate_arrow(table, TASKS), table)


def test_chunked_sliced_and_record_batch(table: pa.Table) -> None:
    chunked = pa.concat_tables([table.slice(0, 5), table.slice(5, 4), table.slice(9)])
    assert chunked.column("edge_src").num_chunks == 3
    assert_matches(collate_arrow(chunked, TASKS), table)
    sliced = table.slice(3, 7)
    assert_matches(collate_arrow(sliced, TASKS), sliced)
    record_batch = table.to_batches()[0].slice(4, 6)
    assert_matches(collate_arrow(record_batch, TASKS), pa.Table.from_batches([record_batch]))


def test_atoms_without_edges_and_no_tasks() -> None:
    row = {
        "id": "x",
        "atomic_numbers": [8, 1, 1],
        "edge_src": [1, 0],
        "edge_dst": [0, 0],
        "edge_dist": [1.0, 1.0],
        "formation_energy_per_atom": None,
        "band_gap": 0.0,
        "efermi": None,
    }
    empty = dict(row, id="y", atomic_numbers=[3], edge_src=[], edge_dst=[], edge_dist=[])
    table = pa.Table.from_pylist([empty, row, empty], schema=SCHEMA)
    assert_matches(collate_arrow(table, TASKS), table)
    batch = collate_arrow(table)
    assert batch.targets.shape == batch.mask.shape == (3, 0)
    np.testing.assert_array_equal(batch.edge_src.numpy(), [2, 1])


def test_rejects_bad_edges(table: pa.Table) -> None:
    rows = table.slice(0, 2).to_pylist()
    bad_index = [dict(rows[0], edge_src=[len(rows[0]["atomic_numbers"])] * len(rows[0]["edge_src"])), rows[1]]
    with pytest.raises(ValueError, match="outside"):
        collate_arrow(pa.Table.from_pylist(bad_index, schema=SCHEMA))
    bad_length = [dict(rows[0], edge_dist=rows[0]["edge_dist"][:-1]), rows[1]]
    with pytest.raises(ValueError, match="same length"):
        collate_arrow(pa.Table.from_pylist(bad_length, schema=SCHEMA))


def test_to_device(table: pa.Table) -> None:
    batch = collate_arrow(table, TASKS)
    moved = batch.to("cpu")
    assert moved.ids == batch.ids and moved.n_crystals == batch.n_crystals
    assert torch.equal(moved.edge_src, batch.edge_src)
    if torch.cuda.is_available():
        assert batch.to("cuda").edge_src.is_cuda
