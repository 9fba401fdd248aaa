"""Property-based tests: the graph builder on random valid cells, the record readers on random junk. No Ray."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mtc.data.graph import build_graph
from mtc.data.records import Rejection, StructureLimits, crystal_from_record

SETTINGS = settings(max_examples=40, deadline=None)
RADIUS, K = 6.0, 8


@st.composite
def cells(draw):
    """A lattice of 3-9 Å vectors, sheared at most by half a vector (volume well away from 0), 1-6 atoms."""
    scale = np.diag(draw(arrays(float, 3, elements=st.floats(3.0, 9.0))))
    shear = draw(arrays(float, (3, 3), elements=st.floats(-0.5, 0.5)))
    lattice = scale @ (np.eye(3) + np.triu(shear, 1))
    frac = draw(arrays(float, (draw(st.integers(1, 6)), 3), elements=st.floats(0.0, 1.0, exclude_max=True)))
    return lattice, frac @ lattice


@SETTINGS
@given(cells(), arrays(float, 3, elements=st.floats(-20, 20)))
def test_graph_invariants(cell, shift):
    lattice, cart = cell
    graph = build_graph(lattice, cart, RADIUS, K)
    n = len(cart)
    assert np.all(np.bincount(graph.edge_dst, minlength=n) <= K)
    assert np.all(graph.edge_dist <= RADIUS + 1e-4) and np.all(graph.edge_dist >= 0)
    assert np.all(np.diff(graph.edge_dst) >= 0)
    assert np.all((graph.edge_src >= 0) & (graph.edge_src < n))
    again = build_graph(lattice, cart, RADIUS, K)
    assert np.array_equal(graph.edge_src, again.edge_src) and np.array_equal(graph.edge_dist, again.edge_dist)
    # A rigid translation moves no distance: each centre's sorted distances are the same.
    moved = build_graph(lattice, cart + shift, RADIUS, K)
    for i in range(n):
        np.testing.assert_allclose(
            np.sort(graph.edge_dist[graph.edge_dst == i]), np.sort(moved.edge_dist[moved.edge_dst == i]), atol=1e-4
        )


JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
NUMBERS = st.floats(-10, 10) | st.integers(-3, 3)
VECTORS = st.lists(NUMBERS, min_size=0, max_size=4)
FIELD = JUNK | st.lists(VECTORS, max_size=4)
SPECIES = JUNK | st.lists(st.sampled_from(["Na", "Cl", "Xx", "", "O2-"]) | JUNK, max_size=4)


def _only_rejections(record: dict) -> None:
    try:
        crystal_from_record(record, StructureLimits(max_atoms=20))
    except Rejection as rejection:
        assert rejection.reason and rejection.reason.islower() and rejection.detail


@SETTINGS
@given(
    st.fixed_dictionaries({"lattice": FIELD, "species": SPECIES}, optional={"frac_coords": FIELD, "cart_coords": FIELD})
)
def test_column_records_never_raise_but_rejection(record):
    _only_rejections(record)


SITE = st.fixed_dictionaries(
    {},
    optional={
        "species": JUNK | st.lists(st.fixed_dictionaries({"element": SPECIES, "occu": JUNK | NUMBERS}), max_size=2),
        "abc": FIELD | VECTORS,
        "xyz": FIELD | VECTORS,
        "@module": JUNK,
    },
)


@SETTINGS
@given(
    JUNK
    | st.fixed_dictionaries(
        {"lattice": JUNK | st.fixed_dictionaries({"matrix": FIELD}), "sites": JUNK | st.lists(SITE, max_size=4)}
    )
)
def test_structure_dicts_never_raise_but_rejection(structure):
    _only_rejections({"structure": structure})


@SETTINGS
@given(st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_cif_text_never_raises_but_rejection(text):
    _only_rejections({"cif": text})
