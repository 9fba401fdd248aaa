"""Files ASE reads (extended XYZ, POSCAR/CONTCAR, ASE databases) as a Parquet database the screen scores.

The frames are read once, before any work (``mtc.data.sources.scan_source``: duplicate ids and unreadable files stop
the screen there), and written into the output folder: frames rejected while reading as
``rejected/part-frames.parquet``, then every other frame as ``input/records.parquet`` (``id``, ``source`` =
file:frame, ``json`` = the plain record). The records file, written last, marks a finished conversion: a rerun
reuses it and resumes like any Parquet screen.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtc.atomic import write_parquet_atomic
from mtc.data.shards import REJECTED_SCHEMA
from mtc.data.sources import ScannedSource, scan_source
from mtc.predict.inputs import RECORD_SCHEMA

RECORDS = Path("input") / "records.parquet"
FRAME_REJECTIONS = "part-frames.parquet"


def scan_frames(db: Path, out: Path) -> ScannedSource | None:
    """The frames of ``db`` to convert, or None when ``out`` already holds them (a resumed screen)."""
    return None if (out / RECORDS).exists() else scan_source(db, labels=[])


def frames_database(out: Path, rejected_folder: Path, scanned: ScannedSource | None) -> tuple[Path, int]:
    """(the records file, frames rejected while reading); writes both from ``scanned`` unless it is None."""
    rejected_path = rejected_folder / FRAME_REJECTIONS
    if scanned is not None:
        write_parquet_atomic(pa.Table.from_pylist(scanned.early_rejections, schema=REJECTED_SCHEMA), rejected_path)
        (out / RECORDS).parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(pa.concat_tables([RECORD_SCHEMA.empty_table(), *scanned.tables]), out / RECORDS)
    return out / RECORDS, pq.read_metadata(rejected_path).num_rows
