"""Structures users hand over (files ASE or pymatgen reads, pandas frames of the REST model) as featurizer records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from mtc.data.frames import UnreadableFile, frames_kind, read_frames
from mtc.data.shards import REJECTED_SCHEMA
from mtc.data.sources import rejection_row

STRUCTURE_COLUMNS = ("cif", "structure", "lattice", "species", "frac_coords", "cart_coords")
RECORD_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("json", pa.string())])


def read_structure_files(paths: list[Path]) -> tuple[pa.Table, pa.Table]:
    """(records, rejected rows) of structure files: every frame of what ASE reads (``mtc.data.frames``: extended
    XYZ, POSCAR/CONTCAR or a folder of them, ASE databases), else one structure per file read by pymatgen (CIF...)
    with ``id`` = the file name."""
    from pymatgen.core import Structure

    records, rejected = [], []
    for path in map(Path, paths):
        if not path.exists():
            rejected.append(rejection_row(path.name, str(path), "missing_file", f"{path} does not exist"))
        elif frames_kind(path):
            try:
                for frame in read_frames(path):
                    if frame.rejection is None:
                        records.append({"id": frame.id, "source": frame.source, "json": json.dumps(frame.record)})
                    else:
                        reason, detail = frame.rejection.reason, frame.rejection.detail
                        rejected.append(rejection_row(frame.id, frame.source, reason, detail))
            except UnreadableFile as err:
                rejected.append(rejection_row(path.name, str(path), "unparseable_file", str(err)))
        else:
            try:
                structure = Structure.from_file(path)
            except Exception as err:  # pymatgen raises many types on a file it cannot read
                rejected.append(rejection_row(path.name, str(path), "unparseable_file", str(err)[:200]))
                continue
            records.append(structure_record(path.name, str(path), structure))
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA), pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)


def structure_record(record_id: str, source: str, structure) -> dict:
    """A pymatgen ``Structure`` as one row of ``RECORD_SCHEMA`` (its plain dict: the featurizer checks it)."""
    return {"id": record_id, "source": source, "json": json.dumps({"structure": structure.as_dict()})}


def records_from_frame(frame) -> pa.Table:
    """A pandas input (``id`` optional, then cif | structure | lattice/species/frac_coords) as featurizer records.

    Rows keep their order; a missing ``id`` column gives the row numbers as ids; a null id stays null (and is
    rejected as ``missing_id`` by the featurizer).

    Raises:
        ValueError: when no structure column is present.
    """
    if not any(c in frame.columns for c in STRUCTURE_COLUMNS):
        raise ValueError(
            f"input needs a 'cif', 'structure' or 'lattice'/'species'/'frac_coords' column; got {list(frame.columns)}"
        )
    ids = frame["id"].tolist() if "id" in frame.columns else list(range(len(frame)))
    keep = [c for c in STRUCTURE_COLUMNS if c in frame.columns]
    rows = []
    for i, (cid, payload) in enumerate(zip(ids, frame[keep].to_dict(orient="records"), strict=True)):
        rows.append(
            {
                "id": None if _is_null(cid) else str(cid),
                "source": f"row {i}",
                "json": json.dumps(payload, default=_plain),
            }
        )
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _plain(value):
    """numpy arrays (and anything else JSON cannot hold) as lists / text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
