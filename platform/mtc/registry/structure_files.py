"""Structure files (CIF, POSCAR, ...) as featurizer records, for ``mtc predict``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from mtc.data.shards import REJECTED_SCHEMA


def read_structure_files(paths: list[Path]) -> tuple[pa.Table, pa.Table]:
    """(records with ``id`` = file name, rejected rows for files pymatgen cannot read)."""
    from pymatgen.core import Structure

    records, rejected = [], []
    for path in paths:
        path = Path(path)
        try:
            structure = Structure.from_file(path)
        except Exception as err:
            reason = "missing_file" if not path.exists() else "unparseable_file"
            rejected.append({"id": path.name, "source": str(path), "reason": reason, "detail": str(err)[:200]})
            continue
        records.append({"id": path.name, "source": str(path), "json": json.dumps({"structure": structure.as_dict()})})
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("json", pa.string())])
    return pa.Table.from_pylist(records, schema=schema), pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA)
