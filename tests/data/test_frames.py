"""Extended XYZ, POSCAR/CONTCAR and ASE databases, written with ASE from real crystals, read without Ray.

Each good frame must give the graph the same crystal gives through the JSONL path, with its labels; each bad frame a
named rejection with its ``file:frame`` source.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pyarrow as pa
import pytest
from ase import Atoms
from ase.io import write

from mtc.config import FeaturizeConfig
from mtc.data.featurize import featurize_table
from mtc.data.sources import InputError, scan_source
from mtc.predict.inputs import read_structure_files

from ..conftest import write_jsonl

LABELS = ["band_gap", "formation_energy_per_atom"]
CONFIG = FeaturizeConfig()


def crystal(record: dict, **info) -> Atoms:
    """A demo crystal as ASE atoms, ``info`` as its per-frame keys."""
    atoms = Atoms(record["species"], scaled_positions=record["frac_coords"], cell=record["lattice"], pbc=True)
    atoms.info.update(info)
    return atoms


def labelled(record: dict) -> Atoms:
    return crystal(record, material_id=record["id"], **{k: record[k] for k in LABELS})


def bad_frames(record: dict) -> dict[str, Atoms]:
    """Frames that must be rejected, by the reason they must get (overlap and Z > 100 on a real cell)."""
    overlapping = crystal(record, material_id="bad-overlap")
    overlapping.positions[1] = overlapping.positions[0] + 0.1
    beyond_table = crystal(record, material_id="bad-element")
    beyond_table.numbers[0] = 118  # Og: ASE writes it, the CGCNN table stops at Z 100
    molecule = Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]], info={"band_gap": 7.0})
    return {"overlapping_atoms": overlapping, "unknown_element": beyond_table, "not_periodic": molecule}


def featurized(src, labels=None) -> tuple[pa.Table, list[dict]]:
    """(featurized rows, early rejections) of ``src`` through the scan and ``featurize_table``, as featurize does."""
    scanned = scan_source(src, labels)
    out = pa.concat_tables(featurize_table(t, CONFIG, scanned.label_columns) for t in scanned.tables)
    return out, scanned.early_rejections


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def assert_same_graphs(rows: dict[str, dict], reference: dict[str, dict], ids) -> None:
    for cid, ref_id in ids:
        row, ref = rows[cid], reference[ref_id]
        assert row["reason"] is None, row
        for column in ("atomic_numbers", "edge_src", "edge_dst"):
            assert row[column] == ref[column], (cid, column)
        np.testing.assert_allclose(row["edge_dist"], ref["edge_dist"], atol=1e-4)


@pytest.fixture(scope="module")
def jsonl_graphs(tmp_path_factory, demo_records) -> dict[str, dict]:
    """The first 12 demo crystals through the existing JSONL path."""
    src = write_jsonl(tmp_path_factory.mktemp("jsonl") / "ref.jsonl", demo_records[:12])
    return by_id(featurized(src, LABELS)[0])


def test_extxyz_frames_labels_and_rejections(tmp_path, demo_records, jsonl_graphs):
    good = demo_records[:8]
    frames = [labelled(r) for r in good]
    del frames[2].info["material_id"]  # no id key: the id is <stem>:<frame>
    frames[3].info["energy"] = -3.25  # ASE reads it back as a calculator result, still a label
    bad = bad_frames(demo_records[8])
    src = tmp_path / "relax.extxyz"
    write(src, [*frames, *bad.values()], format="extxyz")
    # a frame ASE cannot read (no element Xx), then a truncated last frame
    text = src.read_text()
    xx = frames[0].copy()
    xx.info["material_id"] = "bad-symbol"
    write(tmp_path / "xx.extxyz", xx, format="extxyz")
    src.write_text(text + (tmp_path / "xx.extxyz").read_text().replace("\nBa ", "\nXx ") + "5\ncut\nNa 0 0 0\n")

    out, early = featurized(src)
    assert out.schema.names[5:-3] == [*LABELS, "energy"]  # every numeric key, as for JSONL
    rows = by_id(out)
    ids = [r["id"] for r in good]
    ids[2] = "relax:2"
    assert_same_graphs(rows, jsonl_graphs, zip(ids, [r["id"] for r in good], strict=True))
    assert rows[ids[0]]["band_gap"] == pytest.approx(good[0]["band_gap"])
    assert rows[ids[3]]["energy"] == -3.25 and rows[ids[0]]["energy"] is None
    assert rows["bad-overlap"]["reason"] == "overlapping_atoms"
    assert rows["bad-element"]["reason"] == "unknown_element" and "118" in rows["bad-element"]["detail"]
    rejected = {r["id"]: r for r in early}
    assert set(rejected) == {"relax:10", "relax:11", "relax:12"}
    assert rejected["relax:10"]["reason"] == "not_periodic"
    assert rejected["relax:10"]["source"] == f"{src}:10"
    assert rejected["relax:11"]["reason"] == "unparseable_frame" and "Xx" in rejected["relax:11"]["detail"]
    assert rejected["relax:12"]["reason"] == "unparseable_frame"
    assert rows["bad-overlap"]["source"] == f"{src}:8"


def test_poscar_folder_and_single_file(tmp_path, demo_records, jsonl_graphs):
    folder = tmp_path / "vasp"
    folder.mkdir()
    names = ["POSCAR", "CONTCAR", "mp-x.vasp"]
    for name, record in zip(names, demo_records[:3], strict=True):
        write(folder / name, crystal(record), format="vasp", direct=True)
    (folder / "POSCAR.broken").write_text("not a POSCAR\n")
    (folder / "notes.txt").write_text("ignored\n")

    out, early = featurized(folder)
    assert sorted(out.column("id").to_pylist()) == sorted(names)
    assert_same_graphs(by_id(out), jsonl_graphs, zip(names, [r["id"] for r in demo_records[:3]], strict=True))
    assert [(r["id"], r["reason"]) for r in early] == [("POSCAR.broken", "unparseable_file")]

    single, _ = featurized(folder / "CONTCAR")
    assert single.column("id").to_pylist() == ["CONTCAR"] and single.column("reason").to_pylist() == [None]


def test_ase_database_rows(tmp_path, demo_records, jsonl_graphs):
    from ase.db import connect

    src = tmp_path / "candidates.db"
    with connect(src) as db:
        for r in demo_records[:4]:
            db.write(crystal(r), material_id=r["id"], band_gap=r["band_gap"], note="relaxed")
        db.write(crystal(demo_records[4]), band_gap=0.5)  # no material_id: <stem>:<row id>
        db.write(bad_frames(demo_records[5])["not_periodic"], material_id="molecule")

    out, early = featurized(src)
    assert out.schema.names[5:-3] == ["band_gap"]  # "note" is text, not a label
    rows = by_id(out)
    assert_same_graphs(rows, jsonl_graphs, [(r["id"], r["id"]) for r in demo_records[:5]][:4])
    assert_same_graphs(rows, jsonl_graphs, [("candidates:5", demo_records[4]["id"])])
    assert rows["candidates:5"]["band_gap"] == 0.5
    assert [(r["id"], r["reason"], r["source"]) for r in early] == [("molecule", "not_periodic", f"{src}:6")]
    with pytest.raises(InputError, match="no column energy"):
        scan_source(src, ["energy"])


def test_sqlite_file_that_is_not_an_ase_database_is_refused_untouched(tmp_path):
    src = tmp_path / "other.db"
    with sqlite3.connect(src) as con:
        con.execute("CREATE TABLE t (x)")
    before = src.read_bytes()
    with pytest.raises(InputError, match="not an ASE database"):
        scan_source(src)
    assert src.read_bytes() == before
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(InputError, match="not an SQLite file"):
        scan_source(tmp_path / "text.db")


def test_predict_inputs_expand_frames(tmp_path, demo_records):
    write(tmp_path / "two.xyz", [labelled(r) for r in demo_records[:2]], format="extxyz")
    write(tmp_path / "POSCAR", crystal(demo_records[2]), format="vasp")
    paths = [tmp_path / "two.xyz", tmp_path / "POSCAR", tmp_path / "gone.extxyz"]
    records, rejected = read_structure_files(paths)
    assert records.column("id").to_pylist() == [demo_records[0]["id"], demo_records[1]["id"], "POSCAR"]
    assert rejected.to_pylist()[0] | {"detail": None} == {
        "id": "gone.extxyz",
        "source": str(tmp_path / "gone.extxyz"),
        "reason": "missing_file",
        "detail": None,
    }
    assert featurize_table(records, CONFIG, []).column("reason").null_count == 3
