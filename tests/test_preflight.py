"""mtc.preflight without a cluster: which locations are local paths, the per-node probe, the single-node no-op.

The multi-node behaviour (a node that cannot see a path) runs for real in tests/infra/test_multinode.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtc.preflight import MARKER_PREFIX, _probe, check_shared_paths, local_path


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/shards", Path("/data/shards")),
        ("shards", Path("shards")),
        ("file:///data/out", Path("/data/out")),
        ("sqlite:////srv/mtc/mlflow.db", Path("/srv/mtc")),
        ("s3://bucket/mtc/ray_results", None),
        ("gs://bucket/x", None),
        ("http://mlflow:5000", None),
        ("postgresql://u@db/mlflow", None),
    ],
)
def test_local_path(location: str, expected: Path | None) -> None:
    assert local_path(location) == expected


def test_probe_reads_markers_and_reports_what_it_cannot_see(tmp_path: Path) -> None:
    marker = tmp_path / f"{MARKER_PREFIX}abc"
    marker.write_text("abc")
    seen = _probe({"marker": str(marker), "folder": str(tmp_path), "missing": str(tmp_path / "nope")})
    assert seen == {"marker": "abc", "folder": "", "missing": None}


@pytest.mark.ray
def test_single_node_is_not_checked_and_nothing_is_written(ray_session, tmp_path: Path) -> None:
    check_shared_paths({"--out": tmp_path / "out", "MTC_STORAGE": "s3://bucket/x", "unset": None})
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
