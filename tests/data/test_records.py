"""One record -> arrays or a named Rejection, without Ray."""

from __future__ import annotations

import pytest

from mtc.data.records import Rejection, StructureLimits, crystal_from_record

CUBE = [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]


def rejection_of(record: dict, limits: StructureLimits | None = None) -> Rejection:
    with pytest.raises(Rejection) as caught:
        crystal_from_record(record, limits or StructureLimits())
    return caught.value


def test_bad_cart_coords_named_as_such():
    rejection = rejection_of({"lattice": CUBE, "species": ["Na"], "cart_coords": [["x", 0, 0]]})
    assert rejection.reason == "bad_coordinates"
    assert "'cart_coords'" in rejection.detail and "frac_coords" not in rejection.detail


def test_cart_coords_read_as_cartesian():
    crystal = crystal_from_record(
        {"lattice": CUBE, "species": ["Na", "Cl"], "cart_coords": [[0, 0, 0], [2, 2, 2]]}, StructureLimits()
    )
    assert crystal.cart_coords.tolist() == [[0, 0, 0], [2, 2, 2]]
