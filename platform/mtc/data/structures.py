"""Structure inputs: find and scan the sources (driver side), turn one record into checked arrays.

Three source layouts are read:

* a CGCNN / MT-CGCNN folder: ``*.cif`` files and ``id_prop.csv`` (``id,target1,...``, header optional),
* JSONL or JSONL.gz, one crystal per line,
* Parquet (a file or a folder of files).

A *record* is one crystal as a plain dict: an ``id``, a ``source`` (file and line) and the structure in
one of these forms: ``lattice`` + ``species`` + ``frac_coords`` (the mp36k layout), a ``cif`` text, a
``cif_path``, or a pymatgen ``structure`` dict (or its JSON text). Label columns sit beside them.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtc.elements import known_atomic_numbers
from mtc.errors import MtcError

STRUCTURE_FIELDS = frozenset(
    {"id", "source", "lattice", "species", "frac_coords", "cart_coords", "cif", "cif_path", "structure", "json"}
)
ID_PROP = "id_prop.csv"


class InputError(MtcError):
    """A problem with the input as a whole (not one structure): the job stops before any work."""


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


# --------------------------------------------------------------------------------------- sources


@dataclass
class ScannedSource:
    """What the driver learned from a quick pass over the input, before any featurization.

    ``tables`` hold rows ``id``, ``source`` and the record payload (``json`` text for JSONL,
    ``cif_path`` + label text for CIF folders); Parquet inputs leave ``tables`` empty and are read
    by the pipeline from ``parquet_files``. ``early_rejections`` are rows that never reach a worker
    (a line that is not JSON, a row without id, an id whose CIF file is missing).
    """

    kind: str
    files: list[Path]
    n_rows: int
    label_columns: list[str]
    tables: list[pa.Table] = field(default_factory=list)
    parquet_files: list[Path] = field(default_factory=list)
    early_rejections: list[dict] = field(default_factory=list)


def detect_kind(src: Path) -> str:
    """``cif_dir``, ``jsonl`` or ``parquet``; raises InputError naming what was found instead."""
    if not src.exists():
        raise InputError(f"{src} does not exist")
    if src.is_dir():
        if (src / ID_PROP).exists():
            return "cif_dir"
        if any(src.glob("*.parquet")):
            return "parquet"
        if any(src.glob("*.cif")):
            raise InputError(
                f"{src} holds CIF files but no {ID_PROP}: a CIF folder needs {ID_PROP} with one line per "
                "crystal, 'id,target1,target2,...' (the id is the CIF file name without .cif)"
            )
        raise InputError(f"{src} holds neither {ID_PROP} + CIF files nor Parquet files")
    name = src.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise InputError(f"{src}: unknown input format (expected a CIF folder, .jsonl, .jsonl.gz or .parquet)")


def scan_source(src: Path, labels: Sequence[str] | None = None, chunk_rows: int = 2048) -> ScannedSource:
    """Scan ``src`` on the driver: count rows, choose label columns, find duplicate ids.

    Args:
        src: input path.
        labels: label columns to keep; None keeps every numeric column.
        chunk_rows: rows per table handed to the pipeline.
    """
    kind = detect_kind(src)
    scanner = {"cif_dir": _scan_cif_dir, "jsonl": _scan_jsonl, "parquet": _scan_parquet}[kind]
    scanned = scanner(src, labels, chunk_rows)
    if scanned.n_rows == 0:
        raise InputError(f"{src} holds no structures")
    return scanned


def input_files(src: Path) -> list[Path]:
    """Every file whose content defines the input (for the manifest's content hash)."""
    kind = detect_kind(src)
    if kind == "cif_dir":
        return [src / ID_PROP, *sorted(src.glob("*.cif"))]
    if kind == "parquet" and src.is_dir():
        return sorted(src.glob("*.parquet"))
    return [src]


def _check_unique(ids: Sequence[str], src: Path) -> None:
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        shown = ", ".join(sorted(duplicates)[:10])
        more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
        raise InputError(f"{src}: duplicate ids ({len(duplicates)}): {shown}{more}; ids must be unique")


def _chunks(rows: list[dict], schema: pa.Schema, size: int) -> list[pa.Table]:
    return [pa.Table.from_pylist(rows[i : i + size], schema=schema) for i in range(0, len(rows), size)]


def _scan_cif_dir(src: Path, labels: Sequence[str] | None, chunk_rows: int) -> ScannedSource:
    id_prop = src / ID_PROP
    with id_prop.open(newline="") as f:
        lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row and any(c.strip() for c in row)]
    if not lines:
        raise InputError(f"{id_prop} is empty")
    width = max(len(row) for _, row in lines)
    first = lines[0][1]
    has_header = len(first) > 1 and all(c.strip() and not _is_number(c) for c in first[1:])
    if has_header:
        columns = [c.strip() for c in first[1:]]
        lines = lines[1:]
    else:
        columns = [f"target{k}" for k in range(1, width)]
    if labels is not None:
        unknown = [c for c in labels if c not in columns]
        if unknown:
            raise InputError(f"{id_prop}: no column {', '.join(unknown)} (columns: {', '.join(columns)})")
    keep = list(labels) if labels is not None else columns

    rows, rejections = [], []
    for line_no, row in lines:
        cid = row[0].strip()
        source = f"{id_prop}:{line_no}"
        if not cid:
            rejections.append(rejection_row(None, source, "missing_id", "the id cell is empty"))
            continue
        cif_path = src / f"{cid}.cif"
        if not cif_path.exists():
            rejections.append(rejection_row(cid, source, "missing_file", f"{cif_path.name} does not exist"))
            continue
        cells = dict(zip(columns, (c.strip() for c in row[1:]), strict=False))
        rows.append({"id": cid, "source": source, "cif_path": str(cif_path), **{c: cells.get(c) for c in keep}})
    _check_unique([r["id"] for r in rows], id_prop)
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("cif_path", pa.string())])
    schema = pa.schema([*schema, *((c, pa.string()) for c in keep)])
    return ScannedSource(
        kind="cif_dir",
        files=input_files(src),
        n_rows=len(lines),
        label_columns=keep,
        tables=_chunks(rows, schema, chunk_rows),
        early_rejections=rejections,
    )


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.lower().endswith(".gz") else path.open()


def _scan_jsonl(src: Path, labels: Sequence[str] | None, chunk_rows: int) -> ScannedSource:
    rows, rejections, numeric = [], [], {}
    n_rows = 0
    with _open_text(src) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            n_rows += 1
            source = f"{src}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                rejections.append(rejection_row(None, source, "unparseable_json", f"not JSON: {err}"))
                continue
            if not isinstance(record, dict):
                rejections.append(rejection_row(None, source, "unparseable_json", "the line is not an object"))
                continue
            cid = record.get("id")
            if cid is None or str(cid).strip() == "":
                rejections.append(rejection_row(None, source, "missing_id", "the row has no 'id'"))
                continue
            for key, value in record.items():
                if key not in STRUCTURE_FIELDS:
                    is_num = isinstance(value, int | float) and not isinstance(value, bool)
                    numeric[key] = numeric.get(key, False) or is_num
            rows.append({"id": str(cid), "source": source, "json": line})
    _check_unique([r["id"] for r in rows], src)
    label_columns = _choose_labels(src, labels, [k for k, is_num in numeric.items() if is_num], list(numeric))
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("json", pa.string())])
    return ScannedSource(
        kind="jsonl",
        files=[src],
        n_rows=n_rows,
        label_columns=label_columns,
        tables=_chunks(rows, schema, chunk_rows),
        early_rejections=rejections,
    )


def _scan_parquet(src: Path, labels: Sequence[str] | None, chunk_rows: int) -> ScannedSource:
    files = input_files(src)
    schema = pq.read_schema(files[0])
    if "id" not in schema.names:
        raise InputError(f"{files[0]} has no 'id' column (columns: {', '.join(schema.names)})")
    ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").cast(pa.string()).to_pylist()]
    _check_unique([i for i in ids if i is not None], src)
    numeric_types = (pa.types.is_integer, pa.types.is_floating)
    candidates = [f.name for f in schema if f.name not in STRUCTURE_FIELDS]
    numeric = [f.name for f in schema if f.name in candidates and any(t(f.type) for t in numeric_types)]
    return ScannedSource(
        kind="parquet",
        files=files,
        n_rows=len(ids),
        label_columns=_choose_labels(src, labels, numeric, candidates),
        parquet_files=files,
    )


def _choose_labels(src: Path, asked: Sequence[str] | None, numeric: list[str], present: list[str]) -> list[str]:
    if asked is None:
        return numeric
    missing = [c for c in asked if c not in present]
    if missing:
        raise InputError(f"{src}: no column {', '.join(missing)} (columns: {', '.join(present) or 'none'})")
    return list(asked)


def rejection_row(cid: str | None, source: str, reason: str, detail: str) -> dict:
    """A row of rejected.parquet."""
    return {"id": cid, "source": source, "reason": reason, "detail": detail}


# --------------------------------------------------------------------------------------- records


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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
        cart = _float_array(record.get("cart_coords"), "frac_coords", (len(species), 3))
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
