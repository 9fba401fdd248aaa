"""``mtc embed`` then ``mtc similar`` on real crystals and a real registry: every row once, resumed, queried by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from mtc.cluster import Engine
from mtc.registry.models import load_predictor, promote
from mtc.screen.embed import embed
from mtc_cli.app import app
from tests.screen.test_score import assert_same_parts

pytestmark = [pytest.mark.ray, pytest.mark.slow]
runner = CliRunner()
BAD = {"id": "bad-element", "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "species": ["Xx"], "frac_coords": [[0, 0, 0]]}


def test_embed_every_row_once_resume_then_similar(demo_records, trained, tmp_path: Path, ray_session) -> None:
    promote("mtc-test", trained.registered["version"], "embed-tests")
    model = "models:/mtc-test@embed-tests"
    good = demo_records[3000:3300]
    keys = ("formula", "band_gap")  # the input's own columns: written beside each embedding
    rows = [{k: r[k] for k in ("id", *keys, "lattice", "species", "frac_coords")} for r in good] + [BAD]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "db.parquet", row_group_size=100)  # 4 units
    out = tmp_path / "emb"
    command = ["embed", str(tmp_path / "db.parquet"), "--model", model, "--out", str(out), "--workers", "1"]

    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "300 embedded, 1 rejected (unknown_element 1)" in result.output
    embedded = pq.read_table(out / "embeddings").sort_by("id")
    assert embedded.column_names == ["id", "embedding", *keys]
    assert embedded.schema.field("embedding").type == pa.list_(pa.float32())
    assert embedded.select(["id", *keys]).to_pylist() == sorted(
        ({k: r[k] for k in ("id", *keys)} for r in good), key=lambda r: r["id"]
    )
    vectors = np.stack(embedded.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.shape == (300, 32) and np.isfinite(vectors).all()  # configs/tiny.yaml: one trunk, F = 32
    assert pq.read_table(out / "rejected").column("reason").to_pylist() == ["unknown_element"]

    # the library gives the same vectors as the Ray path
    first = [next(r for r in good if r["id"] == i) for i in embedded.column("id").to_pylist()[:3]]
    library = load_predictor(model).embed([Structure(r["lattice"], r["species"], r["frac_coords"]) for r in first])
    np.testing.assert_allclose(library, vectors[:3], rtol=1e-5, atol=1e-5)

    # resume: a unit whose parts are gone (a run killed before writing them) is embedded again, the others kept
    unit = sorted((out / "embeddings").glob("part-*.parquet"))[1].name
    (out / "embeddings" / unit).unlink()
    (out / "rejected" / unit).unlink()
    # #12: finished in this process (--engine local), with the same forward batches as the Ray actors
    result = runner.invoke(app, [*command, "--engine", "local"])
    assert result.exit_code == 0, result.output
    assert "local: this process, no Ray (--engine local)" in result.output
    assert "resumed: 3 finished part(s)" in result.output
    assert_same_parts(pq.read_table(out / "embeddings").sort_by("id"), embedded, "embeddings")
    # #12: on Ray in two stages (featurize tasks feeding scoring actors), the input's columns carried through
    two = embed(tmp_path / "db.parquet", model, tmp_path / "two", workers=1, engine=Engine("ray"), stages=2)
    assert (two.n_scored, two.n_rejected) == (300, 1)
    assert_same_parts(pq.read_table(tmp_path / "two" / "embeddings").sort_by("id"), embedded, "two stages")
    refused = runner.invoke(app, [*command, "--task", "band_gap"])
    assert refused.exit_code == 2 and "the embedded task (--task) changed" in refused.output
    unknown = runner.invoke(app, [*command[:-4], "--out", str(tmp_path / "other"), "--task", "gap"])
    assert unknown.exit_code == 2 and "the model has no task 'gap'" in unknown.output
    assert not list((tmp_path / "other" / "embeddings").iterdir())

    query = embedded.column("id")[42].as_py()
    nn_path = tmp_path / "nn.parquet"
    result = runner.invoke(app, ["similar", str(out), query, "-k", "5", "--out", str(nn_path)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    distance = np.linalg.norm(vectors.astype(np.float64) - vectors[42], axis=1)
    expected = [i for i in np.argsort(distance) if i != 42][:5]
    found = pq.read_table(nn_path)
    assert found.column("id").to_pylist() == [embedded.column("id")[i].as_py() for i in expected]
    np.testing.assert_allclose(found.column("distance").to_numpy(), distance[expected], rtol=1e-5)
    assert found.column("formula").to_pylist() == [embedded.column("formula")[i].as_py() for i in expected]
    assert all(cid in result.output for cid in found.column("id").to_pylist()) and "formula" in result.output

    # a structure file as the query, embedded with the model stored in the folder: a crystal of the database
    # finds itself first, at distance ~0 (round-off between batches of different sizes)
    record = good[7]
    cif = tmp_path / "query.cif"
    Structure(record["lattice"], record["species"], record["frac_coords"]).to(filename=str(cif))
    result = runner.invoke(app, ["similar", str(out), str(cif), "-k", "3", "--out", str(nn_path)])
    assert result.exit_code == 0, result.output
    found = pq.read_table(nn_path).to_pylist()
    assert [r["query"] for r in found] == ["query.cif"] * 3 and found[0]["id"] == record["id"]
    assert found[0]["distance"] < 1e-3 < found[1]["distance"]
