"""Filters and ranking on prediction tables: ``--where "band_gap > 1 and formation_energy_per_atom < -0.5"``."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from mtc.errors import MtcError

_OPS = {"<=": pc.less_equal, ">=": pc.greater_equal, "==": pc.equal, "!=": pc.not_equal, "<": pc.less, ">": pc.greater}
_TERM = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class FilterError(MtcError):
    """A --where or --sort that names an unknown column or cannot be parsed."""


def parse_where(expression: str, columns: list[str]):
    """Parse ``a > 1 and b < 2 or c == 0`` (``and`` binds tighter than ``or``) into a predicate on tables."""
    alternatives = []
    for alternative in re.split(r"\s+or\s+", expression.strip()):
        terms = []
        for term in re.split(r"\s+and\s+", alternative):
            match = _TERM.match(term)
            if not match:
                raise FilterError(
                    f"--where: cannot read {term.strip()!r}; write terms like 'band_gap > 1.0' joined by 'and' / 'or'"
                )
            column, op, number = match.groups()
            if column not in columns:
                raise FilterError(f"--where: no column {column!r}; predictions have {', '.join(columns)}")
            terms.append((column, op, float(number)))
        alternatives.append(terms)

    def predicate(table: pa.Table) -> pa.ChunkedArray:
        def term_mask(column, op, number):
            return pc.fill_null(_OPS[op](table.column(column), number), False)

        masks = [_reduce(pc.and_, [term_mask(*t) for t in terms]) for terms in alternatives]
        return _reduce(pc.or_, masks)

    return predicate


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
        table = table.filter(parse_where(where, table.column_names)(table))
    if sort:
        if sort not in table.column_names:
            raise FilterError(f"--sort: no column {sort!r}; predictions have {', '.join(table.column_names)}")
        table = table.sort_by([(sort, "descending" if desc else "ascending")])
    return table.slice(0, top) if top is not None else table
