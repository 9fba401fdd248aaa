"""``mtc featurize`` through the CLI on real data, with Ray: summaries, reuse, clean errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mtc.data.shards import read_shards
from mtc_cli.app import app

from ..conftest import write_jsonl
from ..data.corpus import MAX_ATOMS, write_jsonl_input

pytestmark = pytest.mark.ray
runner = CliRunner()


def test_featurize_real_data_then_reuse(tmp_path, demo_records, ray_session):
    src = write_jsonl(tmp_path / "mp.jsonl.gz", demo_records[:300])
    args = ["featurize", str(src), "--out", str(tmp_path / "shards"), "--label", "band_gap", "--label", "efermi"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "written" in first.output and "300" in first.output and "structures/s" in first.output
    assert "featurize 300/300 structures (100%): " in first.output  # not a terminal: a plain progress line
    assert read_shards(tmp_path / "shards").column_names[-2:] == ["band_gap", "efermi"]
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused" in second.output

    # #12: as a user runs it, a fresh process: 300 rows are featurized without starting Ray, into the same shards
    args[3] = str(tmp_path / "here")
    here = subprocess.run([sys.executable, "-m", "mtc_cli", *args], capture_output=True, text=True, timeout=120)
    assert here.returncode == 0 and "local: this process, no Ray (auto" in here.stdout, here.stdout + here.stderr
    assert read_shards(tmp_path / "here").sort_by("id").equals(read_shards(tmp_path / "shards").sort_by("id"))


def test_bad_rows_counted_by_reason(tmp_path, demo_records, ray_session):
    good = [r for r in demo_records[:40] if r["nsites"] < MAX_ATOMS]
    src = write_jsonl_input(tmp_path / "mixed.jsonl", good)
    result = runner.invoke(
        app,
        [
            "featurize",
            str(src),
            "--out",
            str(tmp_path / "s"),
            "--max-atoms",
            str(MAX_ATOMS),
            "--max-reject-rate",
            "1.0",
        ],
    )
    assert result.exit_code == 0, result.output
    for reason in ("overlapping_atoms", "singular_lattice", "bad_label", "unparseable_json"):
        assert reason in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["featurize", "{tmp}/missing.jsonl", "--out", "{tmp}/o"], "does not exist"),
        (["featurize", "{bad}", "--out", "{tmp}/o", "--max-reject-rate", "0.05"], "max-reject-rate"),
        (["featurize", "{bad}", "--out", "{tmp}/o", "--label", "nope"], "no column nope"),
        (["featurize", "{bad}", "--out", "{bad}"], "inside the input"),
    ],
)
def test_user_mistakes_are_messages_not_tracebacks(tmp_path, demo_records, ray_session, args, message):
    bad = write_jsonl_input(tmp_path / "mixed.jsonl", demo_records[:10])
    args = [a.format(tmp=tmp_path, bad=bad) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_input_visibility_checked_like_out(tmp_path, demo_records, ray_session, monkeypatch):
    """On a cluster every node reads the input: it goes through the same shared-path check as --out."""
    import mtc.preflight

    seen = {}

    def refuse(paths):
        seen.update(paths)
        raise mtc.preflight.SharedPathError("a node cannot see it")

    monkeypatch.setattr(mtc.preflight, "check_shared_paths", refuse)
    src = write_jsonl(tmp_path / "mp.jsonl", demo_records[:3])
    result = runner.invoke(app, ["featurize", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "a node cannot see it" in result.output
    assert seen == {"SRC": src, "--out": tmp_path / "o"}
