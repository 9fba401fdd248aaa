"""A real two-node Ray cluster on this machine: `mtc featurize` / `mtc screen` on it, a Ray job, the shared-path check.

The head and the worker node are `ray start` processes (tests/infra/ray_nodes.py), so the test run's own Ray is
untouched. The worker node runs in a private mount namespace where one folder is covered by an empty tmpfs: a path
that the driver and the head see and the worker node does not, as on two hosts.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.corpus import MAX_ATOMS, expected, write_jsonl_input
from tests.infra.ray_nodes import LocalRayCluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

LABELS = ["formation_energy_per_atom", "band_gap"]


class TwoNodes(LocalRayCluster):
    """Head + one worker node, 1 CPU each; ``private`` is invisible to the worker node (when root can hide it)."""

    def start(self) -> TwoNodes:
        super().start(head_cpus=1)
        self.private = self.root / "private"
        self.private.mkdir()
        self.worker_isolated = self.can_hide()
        self.add_node(1, hide=self.private if self.worker_isolated else None)
        return self


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="mtc2n-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    nodes = TwoNodes(root)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def structures(tmp_path_factory, demo_records) -> Path:
    """600 real crystals after the corpus's bad JSONL rows."""
    good = demo_records[:600]
    return write_jsonl_input(tmp_path_factory.mktemp("mn-src") / "mixed.jsonl", good)


def _featurize_args(src: Path, out: Path) -> list[str]:
    return [
        "featurize",
        str(src),
        "--out",
        str(out),
        "--max-atoms",
        str(MAX_ATOMS),
        "--max-reject-rate",
        "0.5",
        *(a for label in LABELS for a in ("--label", label)),
    ]


def _ids(path: Path) -> list[str]:
    return sorted(pq.read_table(path, columns=["id"]).column("id").to_pylist(), key=lambda i: (i is None, i or ""))


def test_featurize_on_two_nodes_matches_one_node(cluster, structures, ray_session, tmp_path):
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize

    single = featurize(
        structures, tmp_path / "one", FeaturizeConfig(max_atoms=MAX_ATOMS, max_reject_rate=0.5), labels=LABELS
    )
    out = cluster.root / "shared" / "shards"
    result = cluster.mtc(*_featurize_args(structures, out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ray: 2 node(s), 2 CPUs" in result.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["n_read"], manifest["n_written"]) == (single.n_read, single.n_written)
    assert manifest["rejected_by_reason"] == single.rejected_by_reason
    jsonl_cases = [reason for name, _, reason in expected() if name == "records.jsonl"]
    assert single.n_read == 600 + len(jsonl_cases) and set(single.rejected_by_reason) == set(jsonl_cases)
    parts = [p for p in out.glob("*.parquet") if p.name != "rejected.parquet"]
    ours = pa.concat_tables(pq.read_table(p) for p in parts).sort_by("id")
    theirs = pa.concat_tables(
        pq.read_table(p) for p in (tmp_path / "one").glob("*.parquet") if p.name != "rejected.parquet"
    ).sort_by("id")
    assert ours.column("id").to_pylist() == theirs.column("id").to_pylist()
    assert ours.column("edge_dst").equals(theirs.column("edge_dst"))
    assert _ids(out / "rejected.parquet") == _ids(tmp_path / "one" / "rejected.parquet")
    assert not list(out.glob(".mtc-preflight-*")), "the pre-flight markers are cleaned up"


def test_a_path_one_node_cannot_see_is_refused(cluster, structures):
    if not cluster.worker_isolated:
        pytest.skip("needs root and unshare to hide a folder from the worker node")
    result = cluster.mtc(*_featurize_args(structures, cluster.private / "shards"))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert re.search(rf"node \S+ \([0-9a-f]{{8}}\) cannot see --out {cluster.private}/shards", message), message
    assert "s3://" in message and message.count("cannot see") == 1  # the head node sees it
    assert not (cluster.private / "shards").exists() and not list(cluster.private.iterdir())


def test_screen_on_two_nodes_matches_one_node(cluster, trained, demo_records, ray_session, tmp_path):
    from mtc.screen.score import screen

    rows = [{k: r[k] for k in ("id", "lattice", "species", "frac_coords")} for r in demo_records[2000:2400]]
    rows.append(
        {
            "id": "bad-element",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Xx"],
            "frac_coords": [[0, 0, 0]],
        }
    )
    db = cluster.root / "shared" / "db"
    db.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.slice(0, 200), db / "a.parquet")
    pq.write_table(table.slice(200), db / "b.parquet")
    model = f"models:/mtc-test/{trained.registered['version']}"

    single = screen(db, model, tmp_path / "one", unit_rows=1024)
    out = cluster.root / "shared" / "screened"
    result = cluster.mtc("screen", str(db), "--out", str(out), "--model", model, "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (single.n_input, single.n_scored, single.n_rejected) == (401, 400, 1)
    assert f"{single.n_input:,} structures, {single.n_scored:,} scored, {single.n_rejected:,} rejected" in " ".join(
        result.stdout.split()
    )
    ours = pq.read_table(out / "predictions").sort_by("id")
    theirs = pq.read_table(tmp_path / "one" / "predictions").sort_by("id")
    assert ours.column("id").equals(theirs.column("id"))
    for name in LABELS:
        assert ours.column(name).to_pylist() == pytest.approx(theirs.column(name).to_pylist(), rel=1e-5, abs=1e-5)


def test_ray_job_submit_runs_a_job_entrypoint(cluster, structures):
    out = cluster.root / "shared" / "job-shards"
    result = cluster.submit_job("python", "jobs/featurize.py", *_featurize_args(structures, out)[1:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    written = json.loads((out / "manifest.json").read_text())["n_written"]
    assert written > 590 and f"written {written}" in " ".join(result.stdout.split())
