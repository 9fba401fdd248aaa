"""Forward batches packed by atoms serve what count batches serve, and hold a huge cell alone, on real crystals;
graphs built ahead in a thread serve the same."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from pymatgen.core import Structure

from mtc.data.packing import Batching, atom_counts
from mtc.predict.predictor import StructurePredictor, computed_ahead
from tests.model.conftest import demo_rows
from tests.predict.test_predictor import bundle

KEYS = ("id", "lattice", "species", "frac_coords")
BAD = {"id": "bad-element", "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "species": ["Xx"], "frac_coords": [[0, 0, 0]]}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    rows = [{k: r[k] for k in KEYS} for r in demo_rows(80)]
    return [*rows[:30], BAD, *rows[30:]]


def supercell(row: dict, n: int) -> dict:
    """``row`` repeated n × n × n."""
    s = Structure(row["lattice"], row["species"], row["frac_coords"]).make_supercell([n, n, n])
    return {
        "id": f"{row['id']}-{n}x{n}x{n}",
        "lattice": s.lattice.matrix.tolist(),
        "species": [e.symbol for e in s.species],
        "frac_coords": s.frac_coords.tolist(),
    }


def batches_of(predictor: StructurePredictor, records: pa.Table, batching: Batching) -> tuple[pa.Table, list]:
    """(predictions, the ids and atom counts of each forward batch)."""
    seen = []

    def predict(graphs: pa.Table) -> pa.Table:
        seen.append((graphs.column("id").to_pylist(), atom_counts(graphs)))
        return predictor.predict_graphs(graphs)

    predictions, _ = predictor.score_records(records, batching, predict, predictor.schema)
    return predictions, seen


def test_work_batches_serve_the_rows_count_batches_serve(rows):
    predictor = StructurePredictor(bundle())
    records = pa.Table.from_pylist(rows)
    by_count = predictor.predict_rows(records, Batching(crystals=256))
    by_atoms = predictor.predict_rows(records, Batching(atoms=300))
    assert by_atoms.column("id").to_pylist() == by_count.column("id").to_pylist() == [r["id"] for r in rows]
    assert by_atoms.column("error").to_pylist() == by_count.column("error").to_pylist()
    for name in predictor.output_names():
        np.testing.assert_allclose(
            by_atoms.column(name).to_numpy(zero_copy_only=False),
            by_count.column(name).to_numpy(zero_copy_only=False),
            rtol=1e-5,
            atol=1e-6,
        )
    embedded, rejected = predictor.embed_records(records, Batching(atoms=300))
    np.testing.assert_allclose(
        np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(
            predictor.embed_records(records, Batching(crystals=7))[0].column("embedding").to_numpy(zero_copy_only=False)
        ),
        rtol=1e-5,
        atol=1e-6,
    )
    assert rejected.column("id").to_pylist() == ["bad-element"]


def test_a_huge_cell_goes_alone_and_small_cells_fill_their_batches(rows):
    predictor = StructurePredictor(bundle())
    small = [r for r in rows if r is not BAD][:40]
    huge = supercell(min(small, key=lambda r: len(r["species"])), 6)  # 216 × the smallest cell
    records = pa.Table.from_pylist([*small[:20], huge, *small[20:]])
    budget = 256
    predictions, seen = batches_of(predictor, records, Batching(atoms=budget))
    assert predictions.column("id").to_pylist() == records.column("id").to_pylist()
    alone = [atoms for ids, atoms in seen if huge["id"] in ids]
    assert alone[0].tolist() == [len(huge["species"])] and len(huge["species"]) > budget
    assert all(atoms.sum() <= budget for ids, atoms in seen if huge["id"] not in ids)
    _, by_count = batches_of(predictor, records, Batching(crystals=256))
    assert len(by_count) == 1 and by_count[0][1].sum() > len(huge["species"])  # a count batch holds it with the rest


def test_graphs_built_ahead_in_a_thread_serve_the_same_rows(rows):
    """The local screen's overlap: 80 crystals + a bad row over 2 slices of FEATURIZE_ROWS, built 1 or 4 slices
    ahead, give the predictions, rejections and forward batches of the graphs built inline."""
    records = pa.Table.from_pylist(rows)
    inline, inline_batches = batches_of(StructurePredictor(bundle()), records, Batching(atoms=300))
    for depth in (1, 4):
        ahead, ahead_batches = batches_of(
            StructurePredictor(bundle(), featurize_ahead=depth), records, Batching(atoms=300)
        )
        assert ahead.equals(inline)
        assert [ids for ids, _ in ahead_batches] == [ids for ids, _ in inline_batches]


def test_computed_ahead_keeps_order_overlaps_and_raises_in_place():
    """Results in order at every depth; the thread computes the next items while the caller holds one; an error
    surfaces at its own item, after the ones before it."""
    for depth in (0, 1, 3):
        assert list(computed_ahead(lambda x: x * x, range(7), depth)) == [x * x for x in range(7)]

    started = threading.Event()

    def second_signals(x: int) -> int:
        if x == 1:
            started.set()
        return x

    results = computed_ahead(second_signals, range(3), 1)
    assert next(results) == 0
    assert started.wait(5)  # item 1 was computed while the caller still held item 0
    assert list(results) == [1, 2]

    def fails_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("item 2")
        return x

    got = []
    with pytest.raises(ValueError, match="item 2"):
        for x in computed_ahead(fails_on_two, range(5), 2):
            got.append(x)
    assert got == [0, 1]
