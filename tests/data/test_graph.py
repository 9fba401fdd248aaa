"""The graph builder against a slow reference (pymatgen get_all_neighbors), on real crystals."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mtc.data import graph as graph_module
from mtc.data.graph import build_graph

RADIUS, K, TOL = 8.0, 12, 1e-5


def structure_of(record: dict) -> Structure:
    return Structure(record["lattice"], record["species"], record["frac_coords"])


def reference_neighbours(structure: Structure) -> list[list[tuple[float, int]]]:
    """CGCNN's original way: every neighbour object, sorted by distance in Python, first K kept."""
    result = []
    for site_neighbours in structure.get_all_neighbors(RADIUS, include_index=True):
        ordered = sorted(site_neighbours, key=lambda n: n.nn_distance)
        result.append([(n.nn_distance, n.index) for n in ordered[:K]])
    return result


def per_centre(graph, n_atoms: int) -> list[list[tuple[float, int]]]:
    rows: list[list[tuple[float, int]]] = [[] for _ in range(n_atoms)]
    for s, d, dist in zip(graph.edge_src, graph.edge_dst, graph.edge_dist, strict=True):
        rows[d].append((float(dist), int(s)))
    return rows


def test_matches_get_all_neighbors_on_real_crystals(demo_records):
    # 220 real crystals, small and large cells alike (every 18th of the demo slice).
    sample = demo_records[::18][:220]
    assert len(sample) >= 200
    for record in sample:
        structure = structure_of(record)
        graph = build_graph(structure.lattice.matrix, structure.cart_coords, RADIUS, K)
        ours, ref = per_centre(graph, len(structure)), reference_neighbours(structure)
        for centre, (mine, theirs) in enumerate(zip(ours, ref, strict=True)):
            assert len(mine) == len(theirs), (record["id"], centre)
            np.testing.assert_allclose(
                sorted(d for d, _ in mine), sorted(d for d, _ in theirs), atol=TOL, err_msg=record["id"]
            )
            if not theirs:
                continue
            # Neighbour sets agree except among neighbours tied with the K-th distance (either is right).
            cutoff = theirs[-1][0] - TOL
            inner_mine = sorted((j, d) for d, j in mine if d < cutoff)
            inner_ref = sorted((j, d) for d, j in theirs if d < cutoff)
            assert [j for j, _ in inner_mine] == [j for j, _ in inner_ref], (record["id"], centre)
            np.testing.assert_allclose([d for _, d in inner_mine], [d for _, d in inner_ref], atol=TOL)


def test_edges_sorted_by_centre_then_distance(demo_records):
    structure = structure_of(demo_records[7])
    graph = build_graph(structure.lattice.matrix, structure.cart_coords)
    assert np.all(np.diff(graph.edge_dst) >= 0)
    for centre in np.unique(graph.edge_dst):
        d = graph.edge_dist[graph.edge_dst == centre]
        assert np.all(np.diff(d) >= -1e-6)
    assert graph.edge_src.dtype == np.int32 and graph.edge_dist.dtype == np.float32


def test_one_atom_cell_links_to_its_own_images():
    structure = Structure(Lattice.cubic(3.0), ["Cs"], [[0, 0, 0]])
    graph = build_graph(structure.lattice.matrix, structure.cart_coords)
    assert graph.n_edges == K
    assert set(graph.edge_src.tolist()) == {0} and set(graph.edge_dst.tolist()) == {0}
    np.testing.assert_allclose(graph.edge_dist[:6], 3.0, atol=1e-6)  # the six face neighbours first
    assert graph.edge_dist.min() > 0  # the atom itself is not its own neighbour


def test_isolated_atom_is_kept_without_edges():
    # Two atoms 1.5 Å apart in a 30 Å box with a 2 Å cut-off; a third far from both.
    coords = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [15.0, 15.0, 15.0]])
    graph = build_graph(np.eye(3) * 30.0, coords, radius=2.0)
    assert sorted(graph.edge_dst.tolist()) == [0, 1]
    assert 2 not in graph.edge_dst and 2 not in graph.edge_src


def test_200_atom_cell(demo_records):
    record = max(demo_records, key=lambda r: r["nsites"])
    assert record["nsites"] == 200
    structure = structure_of(record)
    graph = build_graph(structure.lattice.matrix, structure.cart_coords)
    assert graph.n_edges == 200 * K
    assert np.bincount(graph.edge_dst, minlength=200).tolist() == [K] * 200


@pytest.mark.parametrize("max_neighbors", [1, 4, 40])
def test_max_neighbors_caps_each_centre(demo_records, max_neighbors):
    structure = structure_of(demo_records[3])
    graph = build_graph(structure.lattice.matrix, structure.cart_coords, max_neighbors=max_neighbors)
    assert np.bincount(graph.edge_dst).max() <= max_neighbors


def slab_of(structure: Structure, vacuum: float) -> Structure:
    """``structure`` with ``vacuum`` Å added along c: its mean density no longer predicts its neighbour distances."""
    lattice = structure.lattice.matrix.copy()
    lattice[2] *= 1 + vacuum / np.linalg.norm(lattice[2])
    return Structure(lattice, structure.species, structure.cart_coords, coords_are_cartesian=True)


@pytest.mark.parametrize("fill", [0.3, 2.0])
def test_first_search_builds_the_graph_of_the_full_search(demo_records, monkeypatch, fill):
    # fill 0.3 sends most crystals back to the full search, 2.0 (the default) almost none: both must give the
    # graph that searching to the full radius at once gives, bit for bit, on real crystals and on slabs of them.
    crystals = [structure_of(r) for r in demo_records[::40][:50]]
    crystals += [slab_of(s, 12.0) for s in crystals[:10]]
    for max_neighbors in (K, 40):
        monkeypatch.setattr(graph_module, "FIRST_SEARCH_FILL", 1e9)  # first radius beyond 8 Å: one full search
        full = [build_graph(s.lattice.matrix, s.cart_coords, max_neighbors=max_neighbors) for s in crystals]
        monkeypatch.setattr(graph_module, "FIRST_SEARCH_FILL", fill)
        for structure, expected in zip(crystals, full, strict=True):
            got = build_graph(structure.lattice.matrix, structure.cart_coords, max_neighbors=max_neighbors)
            for name in ("edge_src", "edge_dst", "edge_dist"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=str(structure))
