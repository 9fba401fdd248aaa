"""The screen's guarantees on a small real database: every row accounted for, checks before work, honest resume."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtc.registry.models import promote
from mtc.screen.rank import FilterError
from mtc.screen.score import PREDICTIONS, ScreenError, screen

pytestmark = pytest.mark.ray
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


def test_units_whose_every_row_is_rejected_still_finish(demo_records, model, tmp_path, ray_session):
    """#10.1: a slice with no good row used to give float64 columns that no other part could join."""
    db = write_db(tmp_path / "db", demo_records[3000:3006], [BAD, {**BAD, "id": None}])
    for attempt in range(2):  # the rerun reads the same parts back
        summary = screen(db, model, tmp_path / "out", batch_size=1, unit_rows=2, workers=1)
        assert (summary.n_input, summary.n_scored, summary.n_rejected) == (8, 6, 2), attempt
    assert summary.rejected_by_reason == {"unknown_element": 1, "missing_id": 1}
    parts = [pq.read_table(p) for p in sorted((tmp_path / "out" / PREDICTIONS).glob("part-*.parquet"))]
    assert len({p.schema for p in parts}) == 1 and any(p.num_rows == 0 for p in parts)


def test_a_changed_database_is_refused_not_mixed(demo_records, model, tmp_path, ray_session):
    """#10.7: other structures under the same file name must not inherit the old predictions."""
    db = write_db(tmp_path / "db", demo_records[3000:3004])
    screen(db, model, tmp_path / "out", workers=1)
    write_db(db, demo_records[3100:3104])
    with pytest.raises(ScreenError, match="the database content changed"):
        screen(db, model, tmp_path / "out", workers=1)


def test_where_and_sort_are_checked_before_any_scoring(demo_records, model, tmp_path, ray_session):
    """#10.13: a typo must not cost a whole screen; a string column gives the filter's message, not Arrow's."""
    db = write_db(tmp_path / "db", demo_records[3000:3004])
    for where, sort, message in [("id > 1", None, "'id' is not numeric"), (None, "gap", "no column 'gap'")]:
        with pytest.raises(FilterError, match=message):
            screen(db, model, tmp_path / "out", where=where, sort=sort, workers=1)
    assert not list((tmp_path / "out" / PREDICTIONS).glob("part-*.parquet"))
