"""Structure sources, read on the driver before any work: which layout, which rows, which labels.

These layouts are read:

* a CGCNN / MT-CGCNN folder: ``*.cif`` files and ``id_prop.csv`` (``id,target1,...``, header optional),
* JSONL or JSONL.gz, one crystal per line,
* Parquet (a file or a folder of files),
* what ASE reads (``mtc.data.frames``): extended XYZ, POSCAR/CONTCAR (a file or a folder), an ASE database (``.db``);
  each frame becomes a JSONL-style record.

The scan counts rows, chooses label columns and checks ids, so that a problem with the input as a whole
(``InputError``) stops the job before any work; rows that can never reach a worker become rejections here.
Parsing one record is ``mtc.data.records``'s job.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtc.data.frames import UnreadableFile, frame_files, frames_kind, read_frames
from mtc.data.records import STRUCTURE_FIELDS, parse_json, record_id
from mtc.errors import MtcError

ID_PROP = "id_prop.csv"


class InputError(MtcError):
    """A problem with the input as a whole (not one structure): the job stops before any work."""


@dataclass
class ScannedSource:
    """What the driver learned from a quick pass over the input, before any featurization.

    ``tables`` hold rows ``id``, ``source`` and the record payload (``json`` text for JSONL and ASE frames,
    ``cif_path`` + label text for CIF folders); Parquet inputs leave ``tables`` empty and are read
    by the pipeline from ``parquet_files``. ``early_rejections`` are rows that never reach a worker
    (a line that is not JSON, an id whose CIF file is missing).
    """

    kind: str
    files: list[Path]
    n_rows: int
    label_columns: list[str]
    tables: list[pa.Table] = field(default_factory=list)
    parquet_files: list[Path] = field(default_factory=list)
    early_rejections: list[dict] = field(default_factory=list)


def detect_kind(src: Path) -> str:
    """``cif_dir``, ``jsonl``, ``parquet`` or a ``frames_kind``; raises InputError naming what was found instead."""
    if not src.exists():
        raise InputError(f"{src} does not exist")
    if src.is_dir():
        if (src / ID_PROP).exists():
            return "cif_dir"
        if any(src.glob("*.parquet")):
            return "parquet"
        if frames_kind(src):
            return frames_kind(src)
        if any(src.glob("*.cif")):
            raise InputError(
                f"{src} holds CIF files but no {ID_PROP}: a CIF folder needs {ID_PROP} with one line per "
                "crystal, 'id,target1,target2,...' (the id is the CIF file name without .cif)"
            )
        raise InputError(f"{src} holds neither {ID_PROP} + CIF files, Parquet files nor POSCAR/CONTCAR files")
    name = src.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if frames_kind(src):
        return frames_kind(src)
    raise InputError(
        f"{src}: unknown input format (expected a CIF folder, .jsonl, .jsonl.gz, .parquet, extended XYZ (.xyz, "
        ".extxyz), POSCAR/CONTCAR (or .vasp) or an ASE database (.db))"
    )


def scan_source(src: Path, labels: Sequence[str] | None = None, chunk_rows: int = 2048) -> ScannedSource:
    """Scan ``src`` on the driver: count rows, choose label columns, find duplicate ids.

    Args:
        src: input path.
        labels: label columns to keep; None keeps every numeric column.
        chunk_rows: rows per table handed to the pipeline.
    """
    kind = detect_kind(src)
    scanner = {"cif_dir": _scan_cif_dir, "jsonl": _scan_jsonl, "parquet": _scan_parquet}.get(kind, _scan_frames)
    scanned = scanner(src, labels, chunk_rows)
    if scanned.n_rows == 0:
        raise InputError(f"{src} holds no structures")
    return scanned


def check_out_apart(src: Path, out: Path) -> None:
    """Refuse an output folder that is the input or lies inside an input folder.

    Shards written there would become part of the input (a Parquet folder reads every ``*.parquet``), and the
    writer replaces ``part-*.parquet``, the usual name of a Parquet dataset's own files.
    """
    src_path, out_path = src.resolve(), out.resolve()
    if out_path == src_path or (src_path.is_dir() and out_path.is_relative_to(src_path)):
        raise InputError(f"--out {out} is or is inside the input {src}: choose a folder outside the input")


def input_files(src: Path) -> list[Path]:
    """Every file whose content defines the input (for the manifest's content hash)."""
    kind = detect_kind(src)
    if kind == "cif_dir":
        return [src / ID_PROP, *sorted(src.glob("*.cif"))]
    if kind == "parquet" and src.is_dir():
        return sorted(src.glob("*.parquet"))
    return frame_files(src) if frames_kind(src) else [src]


def duplicate_ids(ids: Iterable[str | None]) -> list[str]:
    """Ids seen more than once, sorted, each once; None (a missing id, rejected on its own) is ignored."""
    counts = Counter(i for i in ids if i is not None)
    return sorted(i for i, n in counts.items() if n > 1)


def _check_unique(ids: Iterable[str | None], src: Path) -> None:
    duplicates = duplicate_ids(ids)
    if duplicates:
        shown = ", ".join(duplicates[:10])
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
        cif_path = src / f"{cid}.cif"
        if cid and (Path(cid).name != cid or cid in (".", "..")):  # an id must not reach outside the folder
            rejections.append(rejection_row(cid, source, "bad_id", f"the id {cid!r} is a path, not a file name"))
            continue
        if cid and not cif_path.exists():
            rejections.append(rejection_row(cid, source, "missing_file", f"{cif_path.name} does not exist"))
            continue
        cells = dict(zip(columns, (c.strip() for c in row[1:]), strict=False))
        # A row without id goes on: featurize_table rejects it, as it does for every reader.
        rows.append(
            {
                "id": cid or None,
                "source": source,
                "cif_path": str(cif_path) if cid else None,
                **{c: cells.get(c) for c in keep},
            }
        )
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
    rows, rejections, columns = [], [], {}
    n_rows = 0
    with _open_text(src) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            n_rows += 1
            source = f"{src}:{line_no}"
            try:
                record = parse_json(line)
            except json.JSONDecodeError as err:
                rejections.append(rejection_row(None, source, "unparseable_json", f"not JSON: {err}"))
                continue
            if not isinstance(record, dict):
                rejections.append(rejection_row(None, source, "unparseable_json", "the line is not an object"))
                continue
            _note_columns(columns, record)
            # A row without id goes on: featurize_table rejects it, as it does for every reader.
            rows.append({"id": record_id(record.get("id")), "source": source, "json": line})
    _check_unique([r["id"] for r in rows], src)
    return _json_source("jsonl", src, n_rows, rows, rejections, columns, labels, chunk_rows)


def _scan_frames(src: Path, labels: Sequence[str] | None, chunk_rows: int) -> ScannedSource:
    """Extended XYZ, POSCAR/CONTCAR, ASE databases: each frame as a JSON record, bad frames rejected here."""
    rows, rejections, columns = [], [], {}
    n_rows = 0
    try:
        for frame in read_frames(src):
            n_rows += 1
            if frame.rejection is not None:
                reason, detail = frame.rejection.reason, frame.rejection.detail
                rejections.append(rejection_row(frame.id, frame.source, reason, detail))
                continue
            _note_columns(columns, frame.record)
            rows.append({"id": frame.id, "source": frame.source, "json": json.dumps(frame.record)})
    except UnreadableFile as err:
        raise InputError(str(err)) from None
    _check_unique([r["id"] for r in rows + rejections], src)
    return _json_source(detect_kind(src), src, n_rows, rows, rejections, columns, labels, chunk_rows)


def _note_columns(columns: dict[str, bool], record: dict) -> None:
    """Record each non-structure key of ``record`` in ``columns`` (key -> numeric in every row seen so far)."""
    for key, value in record.items():
        if key not in STRUCTURE_FIELDS:
            is_num = isinstance(value, int | float) and not isinstance(value, bool)
            columns[key] = columns.get(key, False) or is_num


def _json_source(
    kind: str,
    src: Path,
    n_rows: int,
    rows: list[dict],
    rejections: list[dict],
    columns: dict[str, bool],
    labels: Sequence[str] | None,
    chunk_rows: int,
) -> ScannedSource:
    """A source of ``id``/``source``/``json`` rows, labels chosen among the keys seen (numeric ones by default)."""
    label_columns = _choose_labels(src, labels, [k for k, is_num in columns.items() if is_num], list(columns))
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("json", pa.string())])
    return ScannedSource(
        kind=kind,
        files=input_files(src),
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
    _check_unique(map(record_id, ids), src)
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
