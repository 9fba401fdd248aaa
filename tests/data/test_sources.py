"""Readers and checks, without Ray: every bad case becomes a named rejection, good rows all come through."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtc.config import FeaturizeConfig
from mtc.data.featurize import featurize_table
from mtc.data.sources import InputError, duplicate_ids, scan_source

from ..conftest import write_jsonl
from .corpus import MAX_ATOMS, write_cif_folder, write_jsonl_input

CONFIG = FeaturizeConfig(max_atoms=MAX_ATOMS)


def run_scan(src, labels=None):
    scanned = scan_source(src, labels)
    out = pa.concat_tables(featurize_table(t, CONFIG, scanned.label_columns) for t in scanned.tables)
    return scanned, out


def test_rejection_details_name_the_problem(tmp_path, demo_records):
    src = write_jsonl_input(tmp_path / "mixed.jsonl", demo_records[:5])
    scanned, out = run_scan(src, labels=["band_gap"])
    details = dict(zip(out.column("id").to_pylist(), out.column("detail").to_pylist(), strict=True))
    assert "band_gap" in details["j-label-text"] and "n/a" in details["j-label-text"]
    assert "Xx" in details["j-element"]
    assert "101" in details["j-beyond-table"]
    assert str(MAX_ATOMS) in details["j-too-big"]
    assert "'cart_coords'" in details["j-bad-cart"]
    assert "structure.sites[0].abc" in details["j-struct-text-abc"]
    sources = dict(zip(out.column("id").to_pylist(), out.column("source").to_pylist(), strict=True))
    assert sources["j-label-text"].startswith(str(src))
    assert all(":" in r["source"] for r in scanned.early_rejections)  # file:line


def test_missing_label_is_null_not_rejection(tmp_path, demo_records):
    good = demo_records[:3]
    _, out = run_scan(write_jsonl_input(tmp_path / "mixed.jsonl", good), labels=["band_gap"])
    kept = out.filter(pa.compute.is_null(out.column("reason")))
    gaps = dict(zip(kept.column("id").to_pylist(), kept.column("band_gap").to_pylist(), strict=True))
    assert list(gaps) == [r["id"] for r in good]
    assert gaps[good[0]["id"]] is None
    assert gaps[good[1]["id"]] == pytest.approx(good[1]["band_gap"])


def test_cif_graphs_equal_jsonl_graphs(tmp_path, demo_records):
    good = demo_records[:10]
    _, from_cif = run_scan(write_cif_folder(tmp_path / "cifs", good))
    _, from_json = run_scan(write_jsonl(tmp_path / "g.jsonl", good), labels=["band_gap"])
    by_id = {r["id"]: r for r in from_json.to_pylist()}
    for row in from_cif.to_pylist():
        other = by_id[row["id"]]
        assert row["atomic_numbers"] == other["atomic_numbers"]
        assert row["edge_src"] == other["edge_src"]
        assert row["edge_dist"] == pytest.approx(other["edge_dist"], abs=1e-4)


def test_id_prop_without_header_and_string_ids(tmp_path, demo_records):
    folder = write_cif_folder(tmp_path / "cifs", demo_records[:3])
    lines = (folder / "id_prop.csv").read_text().splitlines()[1:]
    (folder / "id_prop.csv").write_text("\n".join(lines) + "\n")
    scanned, out = run_scan(folder)
    assert scanned.label_columns == ["target1", "target2"]
    assert out.column("id").to_pylist() == [r["id"] for r in demo_records[:3]]


def test_pymatgen_dict_and_cif_text_columns(tmp_path, demo_records):
    from pymatgen.core import Structure

    r = demo_records[0]
    structure = Structure(r["lattice"], r["species"], r["frac_coords"])
    rows = [
        {"id": "as-dict", "structure": structure.as_dict(), "band_gap": 1.0},
        {"id": "as-cif", "cif": structure.to(fmt="cif"), "band_gap": 2.0},
    ]
    src = tmp_path / "other.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    _, out = run_scan(src)
    assert out.column("reason").to_pylist() == [None, None]
    assert out.column("atomic_numbers")[0] == out.column("atomic_numbers")[1]


def test_parquet_input(tmp_path, demo_records):
    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords", "band_gap")} for r in demo_records[:8]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "db.parquet")
    scanned = scan_source(tmp_path / "db.parquet")
    assert scanned.kind == "parquet" and scanned.n_rows == 8 and scanned.label_columns == ["band_gap"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: ((p / "empty.jsonl").write_text("") and None) or p / "empty.jsonl", "holds no structures"),
        (lambda p: ((p / "x.cif").write_text("data_x\n") and None) or p, "no id_prop.csv"),
        (lambda p: p / "nowhere.jsonl", "does not exist"),
        (lambda p: ((p / "a.txt").write_text("1") and None) or p / "a.txt", "unknown input format"),
    ],
)
def test_whole_input_errors(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        scan_source(make(tmp_path))


def test_duplicate_ids_are_named(tmp_path, demo_records):
    rows = [demo_records[0], demo_records[1], demo_records[0]]
    src = tmp_path / "dup.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=demo_records[0]["id"]):
        scan_source(src)


def test_unknown_label_column_is_named(tmp_path, demo_records):
    src = write_jsonl_input(tmp_path / "m.jsonl", demo_records[:3])
    with pytest.raises(InputError, match="no column bandgap"):
        scan_source(src, labels=["bandgap"])


def test_every_element_of_the_demo_slice(demo_records):
    """One crystal per element present in the data: each featurizes."""
    seen: dict[str, dict] = {}
    for r in demo_records:
        for s in set(r["species"]):
            seen.setdefault(s, r)
    records = list({r["id"]: r for r in seen.values()}.values())
    table = pa.Table.from_pylist([{"id": r["id"], "source": "demo", "json": json.dumps(r)} for r in records])
    out = featurize_table(table, FeaturizeConfig(), [])
    assert len(seen) > 80
    assert out.column("reason").null_count == len(records)


def test_duplicate_ids_helper():
    assert duplicate_ids(["b", "a", None, "b", None, "a", "c", "b"]) == ["a", "b"]
    assert duplicate_ids(iter([None, None, "x"])) == []
