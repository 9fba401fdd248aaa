"""Real-crystal graph tables for model tests, built with pymatgen (independent of mtc's featurizer)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pymatgen.core import Lattice, Structure

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "mp_demo.jsonl.gz"
LABELS = ("formation_energy_per_atom", "band_gap", "efermi")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("atomic_numbers", pa.list_(pa.int8())),
        ("edge_src", pa.list_(pa.int32())),
        ("edge_dst", pa.list_(pa.int32())),
        ("edge_dist", pa.list_(pa.float32())),
        *[(label, pa.float64()) for label in LABELS],
    ]
)


def demo_rows(n: int, skip: int = 0) -> list[dict]:
    """The first ``n`` demo crystals after ``skip``."""
    with gzip.open(DEMO, "rt") as fh:
        return [json.loads(line) for line in islice(fh, skip, skip + n)]


def crystal_graph(row: dict, radius: float = 8.0, max_nbr: int = 12) -> dict:
    """One shard row: the ``max_nbr`` nearest neighbours within ``radius`` of every atom."""
    structure = Structure(Lattice(row["lattice"]), row["species"], row["frac_coords"])
    centres, points, _, dists = structure.get_neighbor_list(radius)
    order = np.lexsort((dists, centres))
    centres, points, dists = centres[order], points[order], dists[order]
    rank = np.arange(centres.size) - np.searchsorted(centres, centres, side="left")
    keep = rank < max_nbr
    return {
        "id": row["id"],
        "atomic_numbers": [site.specie.Z for site in structure],
        "edge_src": points[keep].astype(np.int32).tolist(),
        "edge_dst": centres[keep].astype(np.int32).tolist(),
        "edge_dist": dists[keep].astype(np.float32).tolist(),
        **{label: row.get(label) for label in LABELS},
    }


def graph_table(rows: list[dict]) -> pa.Table:
    """Shard-schema table of the given demo rows."""
    return pa.Table.from_pylist([crystal_graph(row) for row in rows], schema=SCHEMA)


@pytest.fixture(scope="session")
def demo_table() -> pa.Table:
    """24 real crystals (2-~40 atoms) with their labels."""
    return graph_table(demo_rows(24))


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and a second spinning thread stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
