"""Filters and ranking on prediction tables: ``--where "band_gap > 1 and formation_energy_per_atom < -0.5"``."""

from __future__ import annotations

import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from mtc.errors import MtcError
from mtc.terms import Term, parse_term

_OPS = {"<=": pc.less_equal, ">=": pc.greater_equal, "==": pc.equal, "!=": pc.not_equal, "<": pc.less, ">": pc.greater}

Predicate = Callable[[pa.Table], pa.ChunkedArray]


class FilterError(MtcError):
    """A --where or --sort that names an unknown column or cannot be parsed."""


def _numeric(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]


def parse_where(expression: str, schema: pa.Schema) -> Predicate:
    """Parse ``a > 1 and b < 2 or c == 0`` (``and`` binds tighter than ``or``) into a predicate on tables.

    Every term compares a numeric column of ``schema`` with a number; nulls never pass.

    Raises:
        FilterError: for a term that cannot be read or a column that is missing or not numeric.
    """
    numeric = _numeric(schema)
    alternatives: list[list[Term]] = []
    for alternative in re.split(r"\s+or\s+", expression.strip()):
        terms = []
        for text in re.split(r"\s+and\s+", alternative):
            try:
                term = parse_term(text)
            except ValueError as err:
                raise FilterError(f"--where: {err}; join terms with 'and' / 'or'") from None
            if term.column not in numeric:
                what = "is not numeric" if term.column in schema.names else "does not exist"
                raise FilterError(
                    f"--where: column {term.column!r} {what}; numeric prediction columns: {', '.join(numeric)}"
                )
            terms.append(term)
        alternatives.append(terms)

    def predicate(table: pa.Table) -> pa.ChunkedArray:
        def term_mask(term: Term):
            return pc.fill_null(_OPS[term.op](table.column(term.column), term.threshold), False)

        masks = [_reduce(pc.and_, [term_mask(t) for t in terms]) for terms in alternatives]
        return _reduce(pc.or_, masks)

    return predicate


def check_sort(sort: str, schema: pa.Schema) -> None:
    """Raises FilterError unless ``sort`` names a column of ``schema``."""
    if sort not in schema.names:
        raise FilterError(f"--sort: no column {sort!r}; predictions have {', '.join(schema.names)}")


def check_selection(where: str | None, sort: str | None, schema: pa.Schema) -> None:
    """Validate ``--where`` and ``--sort`` against the prediction schema before any work."""
    if where:
        parse_where(where, schema)
    if sort:
        check_sort(sort, schema)


def _reduce(op, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = op(result, mask)
    return result


def select(
    table: pa.Table, where: str | None = None, sort: str | None = None, desc: bool = False, top: int | None = None
) -> pa.Table:
    """Rows passing ``where``, ordered by ``sort`` (nulls last), the first ``top`` of them."""
    if where:
        table = table.filter(parse_where(where, table.schema)(table))
    if sort:
        check_sort(sort, table.schema)
        table = table.sort_by([(sort, "descending" if desc else "ascending")])
    return table.slice(0, top) if top is not None else table
