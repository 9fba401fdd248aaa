"""Structure files ASE reads, frame by frame: extended XYZ, POSCAR/CONTCAR (a file or a folder), ASE databases.

Each frame becomes the plain record ``mtc.data.records`` reads from JSONL (``lattice``, ``species``, ``cart_coords``)
with the frame's scalar keys beside it as label candidates: ``atoms.info`` and the per-frame results ASE keeps apart
from it (``energy``, ``free_energy``, ``magmom``) for extended XYZ, key_value_pairs and those results for a database
row. A frame that cannot be a crystal is a ``Frame`` carrying a ``Rejection``, so later steps never see the format.

Ids: the frame's ``id`` or ``material_id`` key, else ``<file stem>:<frame index>`` (extended XYZ), ``<file
stem>:<row id>`` (ASE database) or the file name (a POSCAR holds one structure). Sources: ``file:frame`` (0-based,
as ``ase.io.read(file, index=N)`` counts), ``file:row id``, ``file`` for a POSCAR.

Data never runs code: ASE parses the extended XYZ and POSCAR text (no ``eval``); a database is SQLite, checked
read-only to be an ASE database before ASE opens it, and each row is read as arrays and key_value_pairs (never its
``data``, constraints or calculator, which ASE would turn into objects).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtc.data.records import Rejection
from mtc.errors import MtcError

ID_KEYS = ("id", "material_id")
RESULT_KEYS = ("energy", "free_energy", "magmom")  # scalar results ASE moves out of atoms.info into a calculator
EXTXYZ_SUFFIXES = (".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")
VASP_PREFIXES, VASP_SUFFIXES = ("POSCAR", "CONTCAR"), (".vasp", ".poscar")


class UnreadableFile(MtcError):
    """A file that holds no frames at all as its format says (a ``.db`` that is not an ASE database)."""


@dataclass(frozen=True)
class Frame:
    """One structure of a file: ``record`` (plain, JSON-ready) or the ``rejection`` saying why there is none."""

    id: str | None
    source: str
    record: dict | None = None
    rejection: Rejection | None = None


def frames_kind(src: Path) -> str | None:
    """``extxyz``, ``vasp`` (a POSCAR/CONTCAR file or a folder of them) or ``ase_db``; None for other inputs."""
    if src.is_dir():
        return "vasp" if any(_is_vasp(p) for p in src.iterdir()) else None
    name = src.name.lower()
    if name.endswith(EXTXYZ_SUFFIXES):
        return "extxyz"
    if name.endswith(".db"):
        return "ase_db"
    return "vasp" if _is_vasp(src) else None


def frame_files(src: Path) -> list[Path]:
    """The files whose frames ``read_frames(src)`` yields (a folder: its POSCAR/CONTCAR files, sorted)."""
    return sorted(p for p in src.iterdir() if _is_vasp(p)) if src.is_dir() else [src]


def read_frames(src: Path) -> Iterator[Frame]:
    """Every frame of ``src`` in file order, good or rejected. Raises UnreadableFile for a ``.db`` ASE cannot read."""
    kind = frames_kind(src)
    for path in frame_files(src):
        if kind == "extxyz":
            yield from _extxyz_frames(path)
        elif kind == "ase_db":
            yield from _database_frames(path)
        else:
            yield _poscar_frame(path)


def _is_vasp(path: Path) -> bool:
    return path.is_file() and (path.name.upper().startswith(VASP_PREFIXES) or path.name.lower().endswith(VASP_SUFFIXES))


def _stem(path: Path) -> str:
    name = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem


def _frame(atoms, keys: dict, default_id: str, source: str) -> Frame:
    """An ``ase.Atoms`` and its keys as a record, or a rejection when it is not periodic along every cell vector."""
    found = [k for k in ID_KEYS if k in keys]
    cid = _plain_id(keys[found[0]]) if found else default_id
    pbc = [bool(p) for p in atoms.pbc]
    if not all(pbc):
        periodic = ", ".join(axis for axis, p in zip("abc", pbc, strict=True) if p) or "no"
        return Frame(
            cid,
            source,
            rejection=Rejection(
                "not_periodic",
                f"periodic along {periodic} cell vector(s) (pbc {pbc}): a crystal must be periodic along all three; "
                "molecules and slabs are not read",
            ),
        )
    labels = {k: _plain(v) for k, v in keys.items() if k not in ID_KEYS and _is_scalar(v)}
    record = {
        **labels,
        "lattice": np.asarray(atoms.cell, dtype=float).tolist(),
        "species": atoms.get_chemical_symbols(),
        "cart_coords": np.asarray(atoms.positions, dtype=float).tolist(),
    }
    return Frame(cid, source, record=record)


def _plain_id(value) -> str | None:
    value = _plain(value)
    return None if value is None or str(value).strip() == "" else str(value)


def _is_scalar(value) -> bool:
    return isinstance(value, str | int | float | np.generic)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _failed(cid: str, source: str, reason: str, err: Exception) -> Frame:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, KeyError):  # an unknown element symbol, or an unknown type letter in Properties
        message = f"unknown name {message}"
    return Frame(cid, source, rejection=Rejection(reason, f"ASE cannot read it: {message[:200]}"))


def _extxyz_frames(path: Path) -> Iterator[Frame]:
    """Frames split on their atom-count lines, each parsed by ASE alone: a bad frame costs only itself."""
    import gzip

    from ase.io.extxyz import read_xyz

    with gzip.open(path, "rt") if path.name.lower().endswith(".gz") else path.open() as f:
        for index in itertools.count():
            header = next(f, "")
            if not header.strip():
                return
            cid, source = f"{_stem(path)}:{index}", f"{path}:{index}"
            if not header.strip().isdigit():
                detail = f"{header.strip()[:50]!r} is not an atom count: the rest of the file cannot be read as frames"
                yield Frame(cid, source, rejection=Rejection("unparseable_frame", detail))
                return
            text = header + "".join(itertools.islice(f, int(header) + 1))
            try:
                atoms = next(read_xyz(io.StringIO(text), index=0))
            except Exception as err:  # ASE raises many types on a bad frame
                yield _failed(cid, source, "unparseable_frame", err)
                continue
            results = atoms.calc.results if atoms.calc is not None else {}
            yield _frame(atoms, {**atoms.info, **{k: results[k] for k in RESULT_KEYS if k in results}}, cid, source)


def _poscar_frame(path: Path) -> Frame:
    from ase.io import read

    try:
        atoms = read(path, format="vasp")
    except Exception as err:  # ASE raises many types on a bad POSCAR
        return _failed(path.name, str(path), "unparseable_file", err)
    return _frame(atoms, {}, path.name, str(path))


def _database_frames(path: Path) -> Iterator[Frame]:
    from ase import Atoms
    from ase.db import connect

    _check_ase_database(path)
    database = connect(path, type="db", create_indices=False, use_lock_file=False)
    try:
        database.count()  # reads ASE's version table first
    except OSError as err:  # a database of a format this ASE cannot read
        raise UnreadableFile(f"{path}: {err}") from None
    for row in database.select():
        cid, source = f"{_stem(path)}:{row.id}", f"{path}:{row.id}"
        try:
            atoms = Atoms(numbers=row.numbers, positions=row.positions, cell=row.cell, pbc=row.pbc)
            atoms.get_chemical_symbols()  # Z beyond the periodic table fails here
        except Exception as err:  # a crafted row can hold arrays of any shape
            yield _failed(cid, source, "unparseable_frame", err)
            continue
        results = {k: row.get(k) for k in RESULT_KEYS if row.get(k) is not None}
        yield _frame(atoms, {**row.key_value_pairs, **results}, cid, source)


def _check_ase_database(path: Path) -> None:
    """Refuse, without writing to it, a file that is not an ASE database: ASE would create its tables there."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            found = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'systems'").fetchone()[0]
    except sqlite3.Error as err:
        raise UnreadableFile(f"{path}: not an SQLite file ({err}); a .db input must be an ASE database") from None
    if not found:
        raise UnreadableFile(f"{path}: an SQLite file without ASE's 'systems' table, not an ASE database")
