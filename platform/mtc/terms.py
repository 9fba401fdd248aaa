"""``<column> <op> <number>`` terms: one grammar for task derivations (``band_gap == 0``) and ``--where`` filters."""

from __future__ import annotations

import re
from typing import NamedTuple

OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_TERM = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class Term(NamedTuple):
    """``column op threshold``, e.g. ``Term("band_gap", ">", 1.0)``."""

    column: str
    op: str
    threshold: float


def parse_term(text: str) -> Term:
    """Parses ``<column> <op> <number>`` (op one of ==, !=, <, <=, >, >=).

    Raises:
        ValueError: naming the text and the expected form.
    """
    match = _TERM.match(text)
    if match is None:
        raise ValueError(
            f"cannot read {text.strip()!r}: expected '<column> <op> <number>' with op one of {', '.join(OPERATORS)}"
        )
    return Term(match.group(1), match.group(2), float(match.group(3)))
