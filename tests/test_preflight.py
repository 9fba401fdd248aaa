"""mtc.preflight without a cluster: which locations are local paths, the per-node probe, the single-node no-op, and
the warning where bfloat16 would be emulated.

The multi-node behaviour (a node that cannot see a path) runs for real in tests/infra/test_multinode.py.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from mtc import preflight
from mtc.preflight import MARKER_PREFIX, _probe, check_shared_paths, cpu_has_bfloat16, cpus_without_bfloat16, local_path
from mtc_cli.common import EngineKind, Precision, engine


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


def test_cpu_bfloat16_check_agrees_with_the_cpu_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("reads the x86 CPU flags from Linux's /proc/cpuinfo (other CPUs are not probed)")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("has", [True, False])
def test_emulated_bfloat16_is_named_before_work(has: bool, monkeypatch, capsys) -> None:
    monkeypatch.setattr(preflight, "cpu_has_bfloat16", lambda: has)
    assert cpus_without_bfloat16() == ([] if has else ["this machine"])
    for precision in Precision:
        engine(EngineKind.local, None, {}, precision).start("screen", 10)
        out = " ".join(capsys.readouterr().out.split())
        assert out.startswith("local: this process, no Ray (--engine local)")
        warned = "this machine has no bfloat16 instructions (AVX512-BF16, AMX): bfloat16 runs emulated there" in out
        assert warned == (precision is Precision.bfloat16 and not has), out
        assert not warned or out.endswith("leave out --precision bfloat16")
