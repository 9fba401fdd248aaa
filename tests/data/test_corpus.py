"""The bad-input corpus through every reader and through ``featurize_table`` (what the screen and REST model call).

Each case must get exactly its reason; no case may raise; the good real rows mixed in all come through. No Ray.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from mtc.config import FeaturizeConfig
from mtc.data.featurize import _read_parquet_records, featurize_table
from mtc.data.sources import scan_source

from .corpus import (
    INPUTS,
    LABELS,
    MAX_ATOMS,
    case_key,
    expected,
    load_cases,
    records_table,
    write_input,
)

CONFIG = FeaturizeConfig(max_atoms=MAX_ATOMS)


def good_rows(demo_records: list[dict]) -> list[dict]:
    return [r for r in demo_records[:25] if r["nsites"] < MAX_ATOMS]


def test_corpus_is_large_and_covers_every_reader():
    cases = expected()
    assert len(cases) >= 40
    per_input = Counter(i for i, _, _ in cases)
    assert set(per_input) == set(INPUTS) and min(per_input.values()) >= 10
    assert len({(i, k) for i, k, _ in cases}) == len(cases), "a key is listed twice"
    assert all(r.isidentifier() and r.islower() for _, _, r in cases), "reasons are snake_case codes"


@pytest.mark.parametrize("name", list(INPUTS))
def test_each_reader_gives_every_case_its_reason(tmp_path, demo_records, name):
    good = good_rows(demo_records)
    src = write_input(name, tmp_path, good)
    scanned = scan_source(src, LABELS)
    tables = scanned.tables or _read_parquet_records(scanned)
    out = pa.concat_tables(featurize_table(t, CONFIG, scanned.label_columns) for t in tables)

    rejected = out.filter(pa.compute.is_valid(out.column("reason"))).to_pylist() + scanned.early_rejections
    got = {case_key(r["id"], r["source"]): r["reason"] for r in rejected}
    want = {key: reason for i, key, reason in expected() if i == name}
    assert got == want
    kept = out.filter(pa.compute.is_null(out.column("reason"))).column("id").to_pylist()
    assert kept == [r["id"] for r in good], "a good row was lost"
    assert scanned.n_rows == len(want) + len(good)


def test_featurize_table_alone_gives_every_record_case_its_reason():
    """The path of the screen and the REST model: records straight into featurize_table, no scanner."""
    cases = [c for c in load_cases() if c.record is not None]
    assert len(cases) >= 40
    out = featurize_table(records_table(cases), CONFIG, LABELS)
    assert out.column("reason").to_pylist() == [c.reason for c in cases]
    assert all(out.column("detail").to_pylist())
