"""One structure record -> checked arrays, or a ``Rejection`` naming what is wrong. Runs on the workers.

A *record* is one crystal as a plain dict: an ``id``, a ``source`` (file and line) and the structure in
one of these forms: ``lattice`` + ``species`` + ``frac_coords`` (or ``cart_coords``; the mp36k layout),
a ``cif`` text, a ``cif_path``, or a pymatgen-style ``structure`` dict (or its JSON text). Label columns
sit beside them. Every way a record can be bad ends in a ``Rejection``: one bad row never stops a job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtc.elements import known_atomic_numbers

STRUCTURE_FIELDS = frozenset(
    {"id", "source", "lattice", "species", "frac_coords", "cart_coords", "cif", "cif_path", "structure", "json"}
)


class Rejection(Exception):
    """One structure cannot be used. ``reason`` is a short code, ``detail`` says what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StructureLimits:
    """Checks every structure must pass."""

    max_atoms: int = 1000
    min_distance: float = 0.5  # Å; closer pairs are overlapping atoms


@dataclass(frozen=True)
class CrystalArrays:
    """One ordered crystal. lattice (3, 3) rows in Å; cart_coords (N, 3) Å; atomic_numbers (N,) int."""

    lattice: np.ndarray
    cart_coords: np.ndarray
    atomic_numbers: np.ndarray


def crystal_from_record(record: dict, limits: StructureLimits) -> CrystalArrays:
    """Read and check the structure of one record; raises Rejection with the reason."""
    if record.get("cif_path") is not None:
        crystal = _from_cif_text(_read_cif_file(record["cif_path"]))
    elif record.get("cif") is not None:
        crystal = _from_cif_text(record["cif"])
    elif record.get("structure") is not None:
        crystal = _from_pymatgen_dict(record["structure"])
    elif record.get("lattice") is not None or record.get("species") is not None:
        crystal = _from_columns(record)
    else:
        raise Rejection("missing_structure", "no 'cif', 'structure' or 'lattice'/'species'/'frac_coords' field")
    _check_crystal(crystal, limits)
    return crystal


def parse_label(value, column: str) -> float | None:
    """A label cell as a float; None (missing) for null, NaN or an empty cell."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise Rejection("bad_label", f"label '{column}' is {value!r}, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Rejection("bad_label", f"label '{column}' is {value!r}, not a number") from None
    return None if math.isnan(number) else number


def _read_cif_file(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as err:
        raise Rejection("unreadable_file", f"{path}: {err.strerror}") from None


def _from_cif_text(text: str) -> CrystalArrays:
    import warnings

    from pymatgen.io.cif import CifParser

    if not text or not text.strip():
        raise Rejection("empty_cif", "the CIF is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(text, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as err:  # pymatgen raises many types on bad CIFs
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise Rejection("unparseable_cif", f"pymatgen cannot read the CIF: {message[:200]}") from None
    if not structures:
        raise Rejection("unparseable_cif", "the CIF holds no structure")
    return _from_structure(structures[0])


def _from_pymatgen_dict(value) -> CrystalArrays:
    from pymatgen.core import Structure

    try:
        as_dict = json.loads(value) if isinstance(value, str) else value
        structure = Structure.from_dict(as_dict)
    except Exception as err:
        raise Rejection("bad_structure", f"not a pymatgen Structure dict: {str(err)[:200]}") from None
    return _from_structure(structure)


def _from_structure(structure) -> CrystalArrays:
    if not structure.is_ordered:
        raise Rejection("disordered", "the structure has partial occupancies (disordered sites)")
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalArrays(np.array(structure.lattice.matrix), np.array(structure.cart_coords), numbers)


def _from_columns(record: dict) -> CrystalArrays:
    species = record.get("species")
    if not isinstance(species, list | tuple | np.ndarray) or len(species) == 0:
        raise Rejection("bad_species", "'species' is missing or empty")
    lattice = _float_array(record.get("lattice"), "lattice", (3, 3))
    if record.get("frac_coords") is not None:
        frac = _float_array(record["frac_coords"], "frac_coords", (len(species), 3))
        cart = frac @ lattice
    else:
        cart = _float_array(record.get("cart_coords"), "cart_coords", (len(species), 3))
    return CrystalArrays(lattice, cart, _atomic_numbers(species))


def _float_array(value, name: str, shape: tuple[int, int]) -> np.ndarray:
    if value is None:
        raise Rejection("bad_coordinates", f"'{name}' is missing")
    try:
        array = np.array([list(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise Rejection("bad_coordinates", f"'{name}' holds a value that is not a number") from None
    if array.shape != shape:
        raise Rejection("bad_coordinates", f"'{name}' has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise Rejection("bad_coordinates", f"'{name}' holds NaN or infinity")
    return array


_SYMBOL_TO_Z: dict[str, int] = {}


def _atomic_numbers(species) -> np.ndarray:
    if not _SYMBOL_TO_Z:
        from pymatgen.core.periodic_table import Element

        _SYMBOL_TO_Z.update({e.symbol: e.Z for e in Element})
    numbers = []
    for s in species:
        if isinstance(s, dict):
            raise Rejection("disordered", f"site species {s} is a partial occupancy (disordered site)")
        symbol = str(s).strip().rstrip("0123456789+-.")
        z = _SYMBOL_TO_Z.get(symbol)
        if z is None:
            raise Rejection("unknown_element", f"'{s}' is not a chemical element")
        numbers.append(z)
    return np.array(numbers, dtype=np.int64)


def _check_crystal(crystal: CrystalArrays, limits: StructureLimits) -> None:
    n_atoms = len(crystal.atomic_numbers)
    if n_atoms == 0:
        raise Rejection("bad_species", "the structure has no atoms")
    if n_atoms > limits.max_atoms:
        raise Rejection("too_many_atoms", f"{n_atoms} atoms in the cell, more than the limit of {limits.max_atoms}")
    volume = abs(float(np.linalg.det(crystal.lattice)))
    if not volume > 1e-3:
        raise Rejection("singular_lattice", f"the lattice vectors are (nearly) coplanar: volume {volume:.3g} Å³")
    unknown = sorted(set(crystal.atomic_numbers.tolist()) - known_atomic_numbers())
    if unknown:
        raise Rejection("unknown_element", f"atomic numbers {unknown} are beyond the CGCNN element table (Z 1-100)")
