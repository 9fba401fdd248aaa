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
import orjson

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


# The densest solids hold ~0.2 atoms/Å³ (diamond 0.18); five times that leaves room for any real phase under
# pressure, and refuses a crafted cell (1,000 atoms in 1 Å³) before the neighbour search multiplies it.
MAX_ATOMS_PER_VOLUME = 1.0
# Neighbour candidates one structure may cost (≈ N · density · 4/3 π r³): pymatgen returns ~50 bytes per candidate
# and the graph builder sorts them, so this is a few hundred MB on one worker at most. The largest real cells at
# 8 Å need ~0.5 M (1,000 atoms at 0.2 atoms/Å³); the bound only bites on a crafted cell or a far larger radius.
MAX_NEIGHBOR_PAIRS = 4_000_000


@dataclass(frozen=True)
class StructureLimits:
    """Checks every structure must pass (the overlap test on its graph, the others before it is built)."""

    max_atoms: int = 1000
    min_distance: float = 0.5  # Å; closer pairs are overlapping atoms
    radius: float = 8.0  # Å, the graph's neighbour cut-off: bounds the neighbour-search work


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
        crystal = _from_structure_dict(record["structure"], limits)
    elif record.get("lattice") is not None or record.get("species") is not None:
        crystal = _from_columns(record, limits)
    else:
        raise Rejection("missing_structure", "no 'cif', 'structure' or 'lattice'/'species'/'frac_coords' field")
    _check_crystal(crystal, limits)
    return crystal


def parse_json(text: str | bytes):
    """JSON text as Python values, as ``json.loads`` reads it, with orjson where the two agree (1.6x faster).

    Python's json reads what orjson refuses (NaN, Infinity, numbers beyond float64, lone surrogates) and keeps
    integers beyond 64 bits exact where orjson rounds them to floats: an object whose ``id`` came out a float is
    read again, so two long integer ids never collide. Raises ``json.JSONDecodeError`` with json's message.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if isinstance(value, dict) and isinstance(value.get("id"), float):
        return json.loads(text)
    return value


def record_id(value) -> str | None:
    """An id cell as text; None when null or blank (the row is then rejected as ``missing_id``)."""
    return None if value is None or str(value).strip() == "" else str(value)


def parse_label(value, column: str) -> float | None:
    """A label cell as a float; None (missing) for null, NaN or an empty cell."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise Rejection("bad_label", f"label '{column}' is {value!r}, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise Rejection("bad_label", f"label '{column}' is {str(value)[:50]!r}, not a number") from None
    if math.isinf(number):
        raise Rejection("bad_label", f"label '{column}' is infinite")
    return None if math.isnan(number) else number


def _read_cif_file(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as err:
        raise Rejection("unreadable_file", f"{path}: {err.strerror}") from None


def _from_cif_text(text: str) -> CrystalArrays:
    import warnings

    from pymatgen.io.cif import CifParser

    if not isinstance(text, str) or not text.strip():
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
    structure = structures[0]
    if not structure.is_ordered:
        raise Rejection("disordered", "the structure has partial occupancies (disordered sites)")
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalArrays(np.array(structure.lattice.matrix), np.array(structure.cart_coords), numbers)


def _from_structure_dict(value, limits: StructureLimits) -> CrystalArrays:
    """A pymatgen ``Structure.as_dict()`` (or its JSON) read as plain data.

    Never ``Structure.from_dict``: it imports the classes the data names (``@module``/``@class``, in site
    properties too), so a crafted row would run code. Only ``lattice.matrix`` and each site's ``species``
    (element, occupancy) and ``abc`` (fractional) or ``xyz`` (Cartesian) are read; every other key is ignored.
    """
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except json.JSONDecodeError as err:
            raise Rejection("bad_structure", f"'structure' is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise Rejection("bad_structure", f"'structure' is a {type(value).__name__}, not an object")
    lattice_part = value.get("lattice")
    matrix = lattice_part.get("matrix") if isinstance(lattice_part, dict) else None
    lattice = _float_array(matrix, "structure.lattice.matrix", (3, 3), reason="bad_structure")
    sites = value.get("sites")
    if not isinstance(sites, list) or not sites:
        raise Rejection("bad_structure", "'structure.sites' is missing, empty or not a list")
    _check_atom_count(len(sites), limits)
    symbols, cart = [], np.empty((len(sites), 3))
    for k, site in enumerate(sites):
        where = f"structure.sites[{k}]"
        if not isinstance(site, dict):
            raise Rejection("bad_structure", f"'{where}' is not an object")
        symbols.append(_site_element(site.get("species"), where))
        if site.get("abc") is not None:
            cart[k] = _float_array([site["abc"]], f"{where}.abc", (1, 3), reason="bad_structure")[0] @ lattice
        elif site.get("xyz") is not None:
            cart[k] = _float_array([site["xyz"]], f"{where}.xyz", (1, 3), reason="bad_structure")[0]
        else:
            raise Rejection("bad_structure", f"'{where}' has neither 'abc' nor 'xyz' coordinates")
    return CrystalArrays(lattice, cart, _atomic_numbers(symbols))


def _site_element(species, where: str) -> str:
    """The element of an ordered site's ``species`` list ``[{"element": "Na", "occu": 1}]``."""
    if not isinstance(species, list) or not species or not all(isinstance(s, dict) for s in species):
        raise Rejection("bad_structure", f"'{where}.species' is not a list of {{element, occu}} objects")
    occupancies = []
    for s in species:
        occu = s.get("occu", 1)
        if isinstance(occu, bool) or not isinstance(occu, int | float) or not 0 < occu <= 1 + 1e-6:
            raise Rejection("bad_structure", f"'{where}.species' has occupancy {str(occu)[:50]!r}, not in (0, 1]")
        occupancies.append(occu)
    if len(species) > 1 or occupancies[0] < 1 - 1e-6:
        raise Rejection("disordered", f"'{where}' is partially occupied (disordered site)")
    element = species[0].get("element")
    if not isinstance(element, str):
        raise Rejection("bad_structure", f"'{where}.species' names no element")
    return element


def _from_columns(record: dict, limits: StructureLimits) -> CrystalArrays:
    species = record.get("species")
    if not isinstance(species, list | tuple | np.ndarray) or len(species) == 0:
        raise Rejection("bad_species", "'species' is missing or empty")
    _check_atom_count(len(species), limits)
    lattice = _float_array(record.get("lattice"), "lattice", (3, 3))
    if record.get("frac_coords") is not None:
        frac = _float_array(record["frac_coords"], "frac_coords", (len(species), 3))
        cart = frac @ lattice
    else:
        cart = _float_array(record.get("cart_coords"), "cart_coords", (len(species), 3))
    return CrystalArrays(lattice, cart, _atomic_numbers(species))


def _float_array(value, name: str, shape: tuple[int, int], reason: str = "bad_coordinates") -> np.ndarray:
    """``value`` as a finite float array of ``shape``; anything else is a Rejection naming the field."""
    if value is None:
        raise Rejection(reason, f"'{name}' is missing")
    try:
        array = np.array([list(v) for v in value], dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise Rejection(reason, f"'{name}' holds a value that is not a number") from None
    if array.shape != shape:
        raise Rejection(reason, f"'{name}' has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise Rejection(reason, f"'{name}' holds NaN or infinity")
    return array


_SYMBOL_TO_Z: dict[str, int] = {}


def _atomic_numbers(species) -> np.ndarray:
    if not _SYMBOL_TO_Z:
        from pymatgen.core.periodic_table import Element

        _SYMBOL_TO_Z.update({e.symbol: e.Z for e in Element})
    numbers = []
    for s in species:
        if isinstance(s, dict):
            raise Rejection("disordered", f"site species {str(s)[:100]} is a partial occupancy (disordered site)")
        symbol = str(s).strip().rstrip("0123456789+-.")
        z = _SYMBOL_TO_Z.get(symbol)
        if z is None:
            raise Rejection("unknown_element", f"{str(s)[:50]!r} is not a chemical element")
        numbers.append(z)
    return np.array(numbers, dtype=np.int64)


def _check_atom_count(n_atoms: int, limits: StructureLimits) -> None:
    """Before parsing the sites one by one, so an oversized row costs nothing."""
    if n_atoms > limits.max_atoms:
        raise Rejection("too_many_atoms", f"{n_atoms} atoms in the cell, more than the limit of {limits.max_atoms}")


def _check_crystal(crystal: CrystalArrays, limits: StructureLimits) -> None:
    """Arithmetic on the cell only: whatever passes costs a bounded neighbour search (overlaps: on the graph)."""
    n_atoms = len(crystal.atomic_numbers)
    if n_atoms == 0:
        raise Rejection("bad_species", "the structure has no atoms")
    _check_atom_count(n_atoms, limits)
    volume = abs(float(np.linalg.det(crystal.lattice)))
    if not volume > 1e-3:
        raise Rejection("singular_lattice", f"the lattice vectors are (nearly) coplanar: volume {volume:.3g} Å³")
    unknown = sorted(set(crystal.atomic_numbers.tolist()) - known_atomic_numbers())
    if unknown:
        raise Rejection("unknown_element", f"atomic numbers {unknown} are beyond the CGCNN element table (Z 1-100)")
    density = n_atoms / volume
    if density > MAX_ATOMS_PER_VOLUME:
        raise Rejection(
            "too_dense",
            f"{n_atoms} atoms in {volume:.3g} Å³ ({density:.3g} atoms/Å³); no solid holds more than "
            f"{MAX_ATOMS_PER_VOLUME} atoms/Å³",
        )
    pairs = n_atoms * density * 4 / 3 * math.pi * limits.radius**3
    if pairs > MAX_NEIGHBOR_PAIRS:
        raise Rejection(
            "too_many_neighbors",
            f"about {pairs:.3g} neighbour pairs within {limits.radius} Å, more than the bound of "
            f"{MAX_NEIGHBOR_PAIRS:.3g}: a smaller radius or fewer atoms per cell",
        )
