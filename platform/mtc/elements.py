"""The CGCNN element table (92 binned one-hot features per element, Z = 1..100)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

import numpy as np

N_ELEMENT_FEATURES = 92


@lru_cache(maxsize=1)
def element_table() -> np.ndarray:
    """Rows indexed by atomic number; row 0 and unknown elements are all zeros.

    Returns:
        float32 array of shape (max_Z + 1, 92).
    """
    raw = json.loads(files("mtc").joinpath("atom_init.json").read_text())
    max_z = max(int(z) for z in raw)
    table = np.zeros((max_z + 1, N_ELEMENT_FEATURES), dtype=np.float32)
    for z, features in raw.items():
        table[int(z)] = features
    return table


@lru_cache(maxsize=1)
def known_atomic_numbers() -> frozenset[int]:
    """Atomic numbers that have a row in the element table."""
    raw = json.loads(files("mtc").joinpath("atom_init.json").read_text())
    return frozenset(int(z) for z in raw)
