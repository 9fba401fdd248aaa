"""One record -> arrays or a named Rejection, without Ray."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from mtc.config import FeaturizeConfig
from mtc.data.records import Rejection, StructureLimits, crystal_from_record, parse_json

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


def structure_dict(**top) -> dict:
    """A ``Structure.as_dict()``-shaped NaCl whose ``@module``/``@class`` and site properties name other code."""
    site = {"species": [{"element": "Na", "occu": 1}], "abc": [0, 0, 0], "properties": {}}
    return {
        "@module": "os",
        "@class": "system",
        "lattice": {"matrix": CUBE},
        "sites": [site, {"species": [{"element": "Cl", "occu": 1.0}], "xyz": [2.0, 2.0, 2.0]}],
        **top,
    }


def test_structure_dict_never_imports_what_it_names(tmp_path, monkeypatch):
    """pymatgen's from_dict would import ``@module`` names (site properties included): a crafted row runs code."""
    fired = tmp_path / "fired"
    (tmp_path / "mtc_corpus_payload.py").write_text(
        f"import pathlib\npathlib.Path({str(fired)!r}).write_text('ran')\nclass Payload:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = {"@module": "mtc_corpus_payload", "@class": "Payload"}
    record = structure_dict(properties={"x": payload})
    record["sites"][0]["properties"] = {"magmom": payload}
    record["sites"][0]["species"][0]["@module"] = "mtc_corpus_payload"
    for value in (record, json.dumps(record)):
        crystal = crystal_from_record({"structure": value}, StructureLimits())
        assert crystal.atomic_numbers.tolist() == [11, 17]
        assert crystal.cart_coords.tolist() == [[0, 0, 0], [2, 2, 2]]
    assert not fired.exists()
    assert "mtc_corpus_payload" not in sys.modules


def test_dense_cell_rejected_before_any_neighbour_search(monkeypatch):
    """1,000 atoms in 1 Å³ would be ~10⁹ candidate pairs; the check is arithmetic on the cell."""
    import mtc.data.featurize as featurize

    monkeypatch.setattr(featurize, "build_graph", None)  # any neighbour search would raise TypeError
    rng = np.random.default_rng(0)
    record = {"lattice": np.eye(3).tolist(), "species": ["H"] * 1000, "frac_coords": rng.random((1000, 3)).tolist()}
    table = pa.table({"id": ["dense"], "source": ["test"], "json": [json.dumps(record)]})
    started = time.perf_counter()
    out = featurize.featurize_table(table, FeaturizeConfig(), [])
    assert time.perf_counter() - started < 0.5
    assert out.column("reason").to_pylist() == ["too_dense"]
    assert "1000 atoms in 1 Å³" in out.column("detail")[0].as_py()


def test_neighbour_search_work_is_bounded():
    """A real density with a radius that would make millions of pairs: refused before the search."""
    side = 20.0
    rng = np.random.default_rng(1)
    record = {"lattice": (np.eye(3) * side).tolist(), "species": ["Si"] * 800, "frac_coords": rng.random((800, 3))}
    assert rejection_of(record, StructureLimits(radius=30.0, min_distance=0)).reason == "too_many_neighbors"
    assert crystal_from_record(record, StructureLimits(radius=8.0))  # the usual radius passes


@pytest.mark.parametrize(
    "text",
    [
        '{"id": "mp-1", "band_gap": 1.5, "lattice": [[1e-3, 0, 0]], "species": ["Fe"]}',
        '{"id": "mp-2", "band_gap": NaN, "efermi": Infinity}',  # json reads these, orjson refuses them
        '{"id": 123456789012345678901234567890}',  # orjson would round this id to a float
        '{"id": "a\\ud800"}',  # a lone surrogate
        "[1, 2]",
    ],
)
def test_parse_json_reads_what_json_reads(text):
    expected, got = json.loads(text), parse_json(text)
    assert json.dumps(got) == json.dumps(expected) and type(got) is type(expected)


def test_parse_json_raises_json_s_error():
    with pytest.raises(json.JSONDecodeError, match="Expecting value: line 1 column 8"):
        parse_json('{"id": }')
