"""The screen's guarantees on a small real database: every row accounted for, checks before work, honest resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from pymatgen.core import Structure

from mtc.cluster import Engine
from mtc.data.packing import Batching
from mtc.registry.models import promote
from mtc.screen.rank import FilterError
from mtc.screen.score import PREDICTIONS, ScoringPool, ScreenError, scoring_pool, screen
from tests.orphans import orphan_placement_group

pytestmark = pytest.mark.ray
TRAINING_ONLY = {"too_many_atoms", "bad_label"}  # corpus reasons that depend on featurize's labels and limits
BAD = {"id": "bad-element", "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "species": ["Xx"], "frac_coords": [[0, 0, 0]]}


def write_db(folder: Path, records: list[dict], extra: list[dict] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords")} for r in records] + list(extra)
    pq.write_table(pa.Table.from_pylist(rows), folder / "db.parquet")
    return folder


@pytest.fixture(scope="module")
def model(trained) -> str:
    promote("mtc-test", trained.registered["version"], "screen-tests")
    return "models:/mtc-test@screen-tests"


def test_rejected_only_units_finish_and_a_changed_database_is_refused(demo_records, model, tmp_path, ray_session):
    """#10.1: a slice with no good row used to give float64 columns that no other part could join; #10.7: a rerun
    into the same folder used to keep stale predictions when the database changed under the same name."""
    db = write_db(tmp_path / "db", demo_records[3000:3006], [BAD, {**BAD, "id": None}])
    for attempt in range(2):  # the rerun reads the same parts back
        summary = screen(db, model, tmp_path / "out", batching=Batching(crystals=1), unit_rows=2, workers=1)
        assert (summary.n_input, summary.n_scored, summary.n_rejected) == (8, 6, 2), attempt
    assert summary.rejected_by_reason == {"unknown_element": 1, "missing_id": 1}
    parts = [pq.read_table(p) for p in sorted((tmp_path / "out" / PREDICTIONS).glob("part-*.parquet"))]
    assert len({p.schema for p in parts}) == 1 and any(p.num_rows == 0 for p in parts)

    # #10.7: other structures under the same file name must not inherit the old predictions
    write_db(db, demo_records[3100:3106], [BAD, {**BAD, "id": None}])
    with pytest.raises(ScreenError, match="the database content changed"):
        screen(db, model, tmp_path / "out", batching=Batching(crystals=1), unit_rows=2, workers=1)


def assert_same_parts(got: pa.Table, want: pa.Table, where: str) -> None:
    """The same schema and rows in the same order; float (and list<float>) columns equal to float32 round-off."""
    assert got.schema == want.schema and got.num_rows == want.num_rows, where
    for name, column in zip(got.column_names, got.columns, strict=True):
        other, listed = want.column(name), pa.types.is_list(column.type)
        if pa.types.is_floating(column.type.value_type if listed else column.type):
            if listed:
                assert pc.list_value_length(column).equals(pc.list_value_length(other)), f"{where}: {name}"
                column, other = pc.list_flatten(column), pc.list_flatten(other)
            np.testing.assert_allclose(
                column.to_numpy(zero_copy_only=False),
                other.to_numpy(zero_copy_only=False),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{where}: {name}",
            )
        else:
            assert column.equals(other), f"{where}: {name}"


def test_local_engine_and_two_stages_write_the_folder_ray_writes_and_each_resumes_the_other(
    demo_records, model, tmp_path, ray_session
):
    """#12: a small database is scored in this process, without Ray, in local worker processes beside it, and on Ray
    in two stages (featurize tasks feeding scoring actors: the GPU layout, here on CPUs), with the same forward
    batches (several packed by atoms per unit): the same parts as Ray's one stage, and a folder one path started is
    finished by another."""
    db = write_db(tmp_path / "db", demo_records[3000:3300], [BAD])
    packed = Batching(atoms=300)
    paths = {
        "ray": (Engine("ray"), 1, 1),
        "local": (Engine("local"), None, 1),
        "processes": (Engine("local"), None, 2),
        "two-stage": (Engine("ray"), 2, 1),
    }

    def run(folder: str, path: str):
        engine, stages, workers = paths[path]
        return screen(db, model, tmp_path / folder, packed, unit_rows=64, workers=workers, engine=engine, stages=stages)

    threads = torch.get_num_threads()
    for path in paths:
        summary = run(path, path)
        assert (summary.n_scored, summary.n_rejected, summary.rejected_by_reason) == (300, 1, {"unknown_element": 1})
        assert torch.get_num_threads() == threads, path  # each path's own threads are this process's no more
    for folder in (PREDICTIONS, "rejected"):
        parts = {path: sorted((tmp_path / path / folder).glob("part-*.parquet")) for path in paths}
        for path in ("local", "processes", "two-stage"):
            assert [p.name for p in parts["ray"]] == [p.name for p in parts[path]] and len(parts["ray"]) == 5
            for ray_part, other in zip(parts["ray"], parts[path], strict=True):
                assert_same_parts(pq.read_table(other), pq.read_table(ray_part), f"{path}: {folder}/{other.name}")
    for path in ("local", "processes", "two-stage"):
        assert (tmp_path / "ray" / "screen.json").read_text() == (tmp_path / path / "screen.json").read_text()

    reference = pq.read_table(tmp_path / "ray" / PREDICTIONS)
    for started, finish in (("local", "ray"), ("ray", "local"), ("two-stage", "processes")):
        for part in sorted((tmp_path / started / PREDICTIONS).glob("part-*.parquet"))[1:3]:
            part.unlink()
        resumed = run(started, finish)
        assert resumed.n_resumed_units == 3 and resumed.n_scored == 300, finish
        assert_same_parts(pq.read_table(tmp_path / started / PREDICTIONS), reference, f"finished by {finish}")
    with pytest.raises(ScreenError, match="stages=3"):
        screen(db, model, tmp_path / "three", stages=3)
    assert not (tmp_path / "three").exists()  # refused before any work


@pytest.mark.timeout(300)  # without the release the featurize stage waits for a CPU forever
def test_a_two_stage_screen_is_not_starved_by_a_dead_trainings_cpus(demo_records, model, tmp_path, ray_session):
    """A training of this process that died mid-restart (its Train controller killed after it asked for a new
    worker group) leaves a placement group holding CPUs; the screen frees it as it joins Ray instead of waiting."""
    from ray.util.placement_group import placement_group_table

    orphan = orphan_placement_group(0.5)
    db = write_db(tmp_path / "db", demo_records[3000:3100])
    summary = screen(db, model, tmp_path / "out", unit_rows=64, workers=1, engine=Engine("ray"), stages=2)
    assert summary.n_scored == 100
    assert placement_group_table(orphan)["state"] == "REMOVED"


def test_where_and_sort_are_checked_before_any_scoring(demo_records, model, tmp_path, ray_session):
    """#10.13: a typo must not cost a whole screen; a string column gives the filter's message, not Arrow's."""
    db = write_db(tmp_path / "db", demo_records[3000:3004])
    for where, sort, message in [("id > 1", None, "'id' is not numeric"), (None, "gap", "no column 'gap'")]:
        with pytest.raises(FilterError, match=message):
            screen(db, model, tmp_path / "out", where=where, sort=sort, workers=1)
    assert not list((tmp_path / "out" / PREDICTIONS).glob("part-*.parquet"))


def test_bad_input_corpus_through_the_screen_and_the_rest_model(demo_records, model, tmp_path, ray_session):
    """Every corpus case gets its reason from the screen and from the REST model; no good row is lost."""
    import mlflow
    import pandas as pd

    from tests.data.corpus import load_cases, write_input

    good = demo_records[3200:3210]
    (tmp_path / "db").mkdir()
    db = write_input("parquet", tmp_path / "db", good)
    summary = screen(db, model, tmp_path / "out", workers=1)
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist()
    # the screen reads no labels, and uses the model's --max-atoms (1,000), not the corpus's small one
    cases = [c for c in load_cases() if c.input == "parquet" and c.reason not in TRAINING_ONLY]
    passing = sum(c.input == "parquet" and c.reason in TRAINING_ONLY for c in load_cases())
    assert summary.n_scored == len(good) + passing and summary.n_rejected == len(cases) == len(rejected)
    by_source_row = {int(r["source"].rsplit(" ", 1)[1]): r["reason"] for r in rejected}
    for case in cases:
        row = int(case.key.split()[1]) if case.key.startswith("row ") else None
        reason = by_source_row[row] if row is not None else next(r["reason"] for r in rejected if r["id"] == case.key)
        assert reason == case.reason, case

    rest = mlflow.pyfunc.load_model(model)
    record_cases = [
        c
        for c in load_cases()
        if c.record is not None and set(c.record) <= {"id", "cif", "structure"} and c.reason not in TRAINING_ONLY
    ]
    frame = pd.DataFrame([{k: c.record.get(k) for k in ("id", "cif", "structure")} for c in record_cases])
    frame["structure"] = [s if s is None or isinstance(s, str) else json.dumps(s) for s in frame["structure"]]
    good_cif = [Structure(r["lattice"], r["species"], r["frac_coords"]).to(fmt="cif") for r in good[:3]]
    frame = pd.concat([frame, pd.DataFrame({"id": [r["id"] for r in good[:3]], "cif": good_cif})], ignore_index=True)
    out = rest.predict(frame)
    assert len(out) == len(frame) and len(record_cases) >= 10
    for i, case in enumerate(record_cases):
        assert isinstance(out["error"].iloc[i], str) and out["error"].iloc[i].startswith(case.reason + ":"), case
    assert out["error"].iloc[len(record_cases) :].isna().all() and out["band_gap"].iloc[-3:].notna().all()


def test_extended_xyz_screens_every_frame_once_and_resumes(demo_records, model, tmp_path, ray_session):
    """#14: a file ASE reads is converted once into the output folder; frames rejected on reading are counted."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for r in demo_records[3000:3006]:
        frames.append(Atoms(r["species"], scaled_positions=r["frac_coords"], cell=r["lattice"], pbc=True))
        frames[-1].info["material_id"] = r["id"]
    frames[5].positions[1] = frames[5].positions[0]  # overlapping atoms: rejected by an actor
    frames.append(Atoms("N2", positions=[[0, 0, 0], [0, 0, 1.1]]))  # not periodic: rejected on reading
    src = tmp_path / "frames.extxyz"
    write(src, frames, format="extxyz")
    for attempt in range(2):
        summary = screen(src, model, tmp_path / "out", batching=Batching(crystals=2), unit_rows=2, workers=1)
        assert (summary.n_input, summary.n_scored, summary.n_rejected) == (7, 5, 2), attempt
    assert summary.n_resumed_units == 3
    predictions = pq.read_table(tmp_path / "out" / PREDICTIONS)
    assert sorted(predictions.column("id").to_pylist()) == sorted(r["id"] for r in demo_records[3000:3005])
    rejected = {r["reason"]: r for r in pq.read_table(tmp_path / "out" / "rejected").to_pylist()}
    assert rejected["overlapping_atoms"]["source"] == f"{src}:5"
    assert (rejected["not_periodic"]["id"], rejected["not_periodic"]["source"]) == ("frames:6", f"{src}:6")


def test_a_bfloat16_screen_is_near_the_float32_one_and_never_mixes_with_it(demo_records, model, tmp_path):
    """#12: ``--precision bfloat16`` (in this process: no Ray) scores the same rows; a folder started in one precision
    is not finished in the other."""
    db = write_db(tmp_path / "db", demo_records[3000:3064])
    local = Engine("local")
    exact = screen(db, model, tmp_path / "float32", unit_rows=32, engine=local)
    low = screen(db, model, tmp_path / "bfloat16", unit_rows=32, engine=local, precision="bfloat16")
    assert exact.n_scored == low.n_scored == 64
    want, got = pq.read_table(tmp_path / "float32" / PREDICTIONS), pq.read_table(tmp_path / "bfloat16" / PREDICTIONS)
    assert got.schema == want.schema and got["id"].equals(want["id"])
    for task in ("formation_energy_per_atom", "band_gap"):
        moved = np.abs(got[task].to_numpy() - want[task].to_numpy())
        assert 0 < moved.max() < 0.5 * np.abs(want[task].to_numpy()).std(), task  # near, not the same pass
    with pytest.raises(ScreenError, match="--precision changed"):
        screen(db, model, tmp_path / "float32", unit_rows=32, engine=local, precision="bfloat16")


@pytest.mark.parametrize(
    ("stages", "cpus", "gpus", "workers", "units", "pool"),
    [
        (1, 2, 0, None, 10, ScoringPool(2, 1, 0)),  # an actor per CPU, each featurizing and scoring
        (1, 16, 1, None, 40, ScoringPool(16, 1, 1 / 16)),  # a GPU node: 16 actors share its GPU
        (1, 16, 1, 2, 40, ScoringPool(2, 1, 0.5)),
        (2, 16, 1, None, 40, ScoringPool(1, 0, 1.0)),  # an actor per GPU; every CPU featurizes
        (2, 16, 2, 4, 40, ScoringPool(4, 0, 0.5)),
        (2, 2, 0, None, 10, ScoringPool(1, 1, 0)),  # CPUs only: the featurize tasks keep a CPU
        (2, 2, 0, 5, 10, ScoringPool(1, 1, 0)),
        (1, 16, 0, None, 3, ScoringPool(3, 1, 0)),  # never more actors than units
    ],
)
def test_scoring_pool_fits_the_cluster(stages, cpus, gpus, workers, units, pool):
    assert scoring_pool(stages, cpus, gpus, workers, units) == pool


def test_a_two_stage_screen_on_one_cpu_is_refused():
    with pytest.raises(ScreenError, match="needs 2 or more"):
        scoring_pool(2, 1, 0, None, 10)
