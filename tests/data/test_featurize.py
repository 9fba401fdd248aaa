"""The Ray Data featurize pipeline on real crystals and on the bad-input corpus."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtc.cluster import Engine
from mtc.config import FeaturizeConfig
from mtc.data.featurize import RejectionLimitError, featurize, featurize_table
from mtc.data.shards import REJECTED, read_manifest, read_shards
from mtc.data.sources import InputError

from ..conftest import write_jsonl
from .corpus import INPUTS, LABELS, MAX_ATOMS, case_key, expected, write_input, write_jsonl_input

pytestmark = pytest.mark.ray


def test_real_crystals_round_trip_and_rerun_reuses(tmp_path, demo_records, ray_session):
    records = demo_records[:600]
    src = write_jsonl(tmp_path / "mp.jsonl.gz", records)
    config = FeaturizeConfig(rows_per_shard=256)
    summary = featurize(src, tmp_path / "shards", config, labels=["formation_energy_per_atom", "band_gap"])
    assert (summary.n_read, summary.n_written, summary.n_rejected) == (600, 600, 0)
    assert not summary.reused
    manifest = read_manifest(tmp_path / "shards")
    assert manifest["params"] == config.graph_params()
    assert sum(s["rows"] for s in manifest["shards"]) == 600 and max(s["rows"] for s in manifest["shards"]) <= 256

    shards = read_shards(tmp_path / "shards")
    assert sorted(shards.column("id").to_pylist()) == sorted(r["id"] for r in records)
    # The same arrays as the pure function computes in this process.
    table = pa.Table.from_pylist([{"id": r["id"], "source": "", "json": json.dumps(r)} for r in records[:40]])
    expected = {r["id"]: r for r in featurize_table(table, config, ["band_gap"]).to_pylist()}
    for row in shards.to_pylist():
        if row["id"] in expected:
            assert row["edge_src"] == expected[row["id"]]["edge_src"]
            assert row["edge_dist"] == expected[row["id"]]["edge_dist"]
            assert row["band_gap"] == expected[row["id"]]["band_gap"]

    # #12: in this process, without Ray, the same rows in the same (input) order; the shards are cut per task
    labels = ["formation_energy_per_atom", "band_gap"]
    local = featurize(src, tmp_path / "local", config, labels, engine=Engine("local"))
    assert {**local.manifest, "created": None, "shards": None} == {**summary.manifest, "created": None, "shards": None}
    assert shards.column("id").to_pylist() == [r["id"] for r in records]
    assert read_shards(tmp_path / "local").equals(shards)

    mtime = (tmp_path / "shards" / "part-00000.parquet").stat().st_mtime_ns
    again = featurize(src, tmp_path / "shards", config, labels=["formation_energy_per_atom", "band_gap"])
    assert again.reused and again.n_written == 600
    assert (tmp_path / "shards" / "part-00000.parquet").stat().st_mtime_ns == mtime

    changed = featurize(src, tmp_path / "shards", FeaturizeConfig(radius=6.0), labels=["band_gap"])
    assert not changed.reused
    assert read_manifest(tmp_path / "shards")["params"]["radius"] == 6.0


@pytest.mark.parametrize("name", list(INPUTS))
def test_bad_corpus_rejected_good_rows_kept(tmp_path, demo_records, ray_session, name):
    good = [r for r in demo_records[:25] if r["nsites"] < MAX_ATOMS]
    src = write_input(name, tmp_path, good)
    config = FeaturizeConfig(max_atoms=MAX_ATOMS, max_reject_rate=1.0)
    summary = featurize(src, tmp_path / "shards", config, labels=LABELS)

    rejected = pq.read_table(tmp_path / "shards" / REJECTED).to_pylist()
    got = {case_key(r["id"], r["source"]): r["reason"] for r in rejected}
    assert got == {key: reason for i, key, reason in expected() if i == name}
    assert summary.n_written == len(good) and summary.n_rejected == len(got)
    assert sorted(read_shards(tmp_path / "shards").column("id").to_pylist()) == sorted(r["id"] for r in good)

    # #12: in this process, without Ray, the same bad rows with the same reasons and details, and the same rows,
    # each in input order
    local = featurize(src, tmp_path / "local", config, labels=LABELS, engine=Engine("local"))
    assert (local.n_written, local.rejected_by_reason) == (summary.n_written, summary.rejected_by_reason)
    bad = {d: pq.read_table(tmp_path / d / REJECTED) for d in ("shards", "local")}
    assert bad["local"].equals(bad["shards"]) and bad["local"].num_rows == len(got)
    assert read_shards(tmp_path / "local").equals(read_shards(tmp_path / "shards"))


def test_out_inside_the_input_is_refused_and_the_input_kept(tmp_path, demo_records, ray_session):
    db = tmp_path / "db"
    db.mkdir()
    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords", "band_gap")} for r in demo_records[:6]]
    for n in range(2):
        pq.write_table(pa.Table.from_pylist(rows[3 * n : 3 * n + 3]), db / f"part-{n:05d}.parquet")
    before = {p.name: p.read_bytes() for p in db.iterdir()}
    for out in (db, db / "shards"):
        with pytest.raises(InputError, match="inside the input") as caught:
            featurize(db, out, FeaturizeConfig())
        assert str(db) in str(caught.value) and str(out) in str(caught.value)
    assert {p.name: p.read_bytes() for p in db.iterdir()} == before


def test_parquet_input(tmp_path, demo_records, ray_session):
    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords", "efermi")} for r in demo_records[:50]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "db.parquet")
    summary = featurize(tmp_path / "db.parquet", tmp_path / "shards", FeaturizeConfig())
    assert summary.n_written == 50
    assert read_shards(tmp_path / "shards").column_names[-1] == "efermi"


def test_rejection_rate_limit_and_all_rejected(tmp_path, demo_records, ray_session):
    good = [r for r in demo_records[:5] if r["nsites"] < MAX_ATOMS]
    src = write_jsonl_input(tmp_path / "mixed.jsonl", good)
    with pytest.raises(RejectionLimitError, match="max-reject-rate"):
        featurize(src, tmp_path / "a", FeaturizeConfig(max_atoms=MAX_ATOMS, max_reject_rate=0.1))
    assert (tmp_path / "a" / REJECTED).exists()  # the reasons are there to read

    bad_only = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "species": ["Na"], "lattice": None}])
    with pytest.raises(RejectionLimitError, match="every one of the 1 structures"):
        featurize(bad_only, tmp_path / "b", FeaturizeConfig())


def test_extended_xyz_input(tmp_path, demo_records, ray_session):
    from ase import Atoms
    from ase.io import write

    frames = []
    for r in demo_records[:30]:
        atoms = Atoms(r["species"], scaled_positions=r["frac_coords"], cell=r["lattice"], pbc=True)
        atoms.info.update(material_id=r["id"], band_gap=r["band_gap"])
        frames.append(atoms)
    frames.append(Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]]))
    write(tmp_path / "frames.extxyz", frames, format="extxyz")
    summary = featurize(tmp_path / "frames.extxyz", tmp_path / "shards", FeaturizeConfig())
    assert (summary.n_read, summary.n_written, summary.rejected_by_reason) == (31, 30, {"not_periodic": 1})
    shards = read_shards(tmp_path / "shards")
    gaps = dict(zip(shards.column("id").to_pylist(), shards.column("band_gap").to_pylist(), strict=True))
    assert gaps == pytest.approx({r["id"]: r["band_gap"] for r in demo_records[:30]})
    rejected = pq.read_table(tmp_path / "shards" / REJECTED).to_pylist()
    assert [(r["id"], r["source"]) for r in rejected] == [("frames:30", f"{tmp_path / 'frames.extxyz'}:30")]
    assert read_manifest(tmp_path / "shards")["source_kind"] == "extxyz"
