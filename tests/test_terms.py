"""The one grammar of ``column op number`` terms (task derivations and --where)."""

from __future__ import annotations

import pytest

from mtc.terms import Term, parse_term


def test_parse_term_reads_every_operator_and_number_form() -> None:
    assert parse_term("band_gap == 0") == Term("band_gap", "==", 0.0)
    assert parse_term(" x<=-1.5e-2 ") == Term("x", "<=", -0.015)
    assert parse_term("a != .5") == Term("a", "!=", 0.5)
    assert parse_term("a>=+3") == Term("a", ">=", 3.0)


@pytest.mark.parametrize(
    "bad",
    ["band_gap", "band_gap = 0", "__import__('os').system('x') == 0", "a == b", "1 < a", "a < 1 or 1", "", "a < 1e"],
)
def test_parse_term_refuses_anything_else(bad: str) -> None:
    with pytest.raises(ValueError, match="expected '<column> <op> <number>'"):
        parse_term(bad)
