"""--where and --sort on prediction tables: the grammar, the checks before work, nulls."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mtc.screen.rank import FilterError, check_selection, parse_where, select

TABLE = pa.table(
    {
        "id": ["a", "b", "c", "d"],
        "band_gap": pa.array([0.0, 1.5, None, 3.0], pa.float32()),
        "formation_energy_per_atom": pa.array([-1.0, -0.2, -2.0, 0.4], pa.float32()),
        "is_metal": pa.array([1, 0, 0, 0], pa.int8()),
    }
)


def ids(table: pa.Table) -> list[str]:
    return table.column("id").to_pylist()


def test_and_binds_tighter_than_or_and_nulls_never_pass():
    predicate = parse_where("band_gap > 1 and formation_energy_per_atom < 0 or is_metal == 1", TABLE.schema)
    assert ids(TABLE.filter(predicate(TABLE))) == ["a", "b"]
    assert ids(select(TABLE, where="band_gap >= 0")) == ["a", "b", "d"]  # c has no band gap


def test_sort_and_top():
    assert ids(select(TABLE, sort="formation_energy_per_atom", top=2)) == ["c", "a"]
    assert ids(select(TABLE, sort="band_gap", desc=True)) == ["d", "b", "a", "c"]


@pytest.mark.parametrize(
    ("where", "sort", "message"),
    [
        ("gap > 1", None, "column 'gap' does not exist"),
        ("id > 1", None, "column 'id' is not numeric"),
        ("band_gap >> 1", None, "cannot read 'band_gap >> 1'"),
        ("band_gap > 1 and", None, "cannot read"),
        (None, "gap", "--sort: no column 'gap'"),
    ],
)
def test_mistakes_are_named_before_any_work(where, sort, message):
    with pytest.raises(FilterError, match=message):
        check_selection(where, sort, TABLE.schema)
