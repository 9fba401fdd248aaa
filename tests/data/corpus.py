"""The bad-input corpus: malformed structures kept as data in ``tests/data/corpus/``, each with the reason it must get.

* ``records.jsonl``: a JSONL input, one bad row per line (every structure form: columns, ``cif``, ``structure``).
* ``cif/``: a CGCNN folder (``id_prop.csv`` + CIF files) with one bad row per line.
* ``parquet.jsonl``: rows of a Parquet input, written with ``PARQUET_SCHEMA`` (typed columns, null ids).
* ``expected.csv``: ``input,key,reason`` for every case; ``key`` is the id, or ``line N`` / ``row N`` (1-based line
  of the file, 0-based Parquet row) for a row without a usable id.

To grow it, add a row to an input file (at its end) and its line to ``expected.csv``. The writers below append good
real crystals after the bad rows, so the keys by line or row stay valid. ``load_cases()`` gives every case a single
record can show, for the other entry points (``featurize_table``, the screen, the REST model).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

CORPUS = Path(__file__).parent / "corpus"
MAX_ATOMS = 150  # the corpus runs with this size limit: its 216-atom cell exceeds it
LABELS = ["formation_energy_per_atom", "band_gap"]  # the label columns the corpus is read with
INPUTS = {"records.jsonl": "jsonl", "cif": "cif", "parquet": "parquet"}
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("lattice", pa.list_(pa.list_(pa.float64()))),
        ("species", pa.list_(pa.string())),
        ("frac_coords", pa.list_(pa.list_(pa.float64()))),
        ("cif", pa.string()),
        ("structure", pa.string()),
        ("formation_energy_per_atom", pa.float64()),
        ("band_gap", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Case:
    """One bad row: which input holds it, its id (or ``line N`` / ``row N``), the reason it must get.

    ``record`` is the row as a plain record (``id`` null when it has none) when one record shows the case;
    None for what only a whole input can show (a line that is not JSON, a CIF file that is missing).
    """

    input: str
    key: str
    reason: str
    record: dict | None


def expected() -> list[tuple[str, str, str]]:
    """(input, key, reason) of every case, as ``expected.csv`` lists them."""
    with (CORPUS / "expected.csv").open(newline="") as f:
        return [(r["input"], r["key"], r["reason"]) for r in csv.DictReader(f)]


def load_cases() -> list[Case]:
    """Every case with its record where one record shows it (see ``Case``)."""
    records = {**_jsonl_records(), **_cif_records(), **_parquet_records()}
    return [Case(i, key, reason, records.get((i, key))) for i, key, reason in expected()]


def records_table(cases: list[Case]) -> pa.Table:
    """The cases' records as the table ``featurize_table`` reads (``id``, ``source``, ``json``), in order."""
    rows = [c for c in cases if c.record is not None]
    return pa.table(
        {
            "id": pa.array([c.record.get("id") for c in rows], pa.string()),
            "source": pa.array([f"{c.input} {c.key}" for c in rows], pa.string()),
            "json": pa.array([json.dumps(c.record) for c in rows], pa.string()),
        }
    )


def write_jsonl_input(path: Path, good: list[dict]) -> Path:
    """``records.jsonl`` then the good rows (the first with a missing label: a null, not a rejection)."""
    good = [dict(r) for r in good]
    good[0]["band_gap"] = None
    text = (CORPUS / "records.jsonl").read_text() + "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text)
    return path


def write_cif_input(folder: Path, good: list[dict]) -> Path:
    """The corpus CIF folder, then one CIF per good crystal with its ``id_prop.csv`` line."""
    shutil.copytree(CORPUS / "cif", folder)
    write_cif_folder(folder, good, header=False)
    return folder


def write_cif_folder(folder: Path, good: list[dict], header: bool = True) -> Path:
    """CIF files of real crystals and their ``id_prop.csv`` lines (appended; the first crystal lacks band_gap)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id," + ",".join(LABELS)] if header else []
    for r in good:
        CifWriter(Structure(r["lattice"], r["species"], r["frac_coords"])).write_file(folder / f"{r['id']}.cif")
        gap = "" if r is good[0] else r["band_gap"]
        lines.append(f"{r['id']},{r['formation_energy_per_atom']},{gap}")
    with (folder / "id_prop.csv").open("a") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def write_parquet_input(path: Path, good: list[dict]) -> Path:
    """``parquet.jsonl``'s rows then the good rows, as one Parquet file of ``PARQUET_SCHEMA``."""
    rows = [*_parquet_rows(), *({k: r.get(k) for k in PARQUET_SCHEMA.names} for r in good)]
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), path)
    return path


def _parquet_rows() -> list[dict]:
    lines = (CORPUS / "parquet.jsonl").read_text().splitlines()
    return [{k: row.get(k) for k in PARQUET_SCHEMA.names} for row in map(json.loads, lines)]


def _jsonl_records() -> dict[tuple[str, str], dict]:
    records = {}
    for n, line in enumerate((CORPUS / "records.jsonl").read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            has_id = record.get("id") is not None and str(record["id"]).strip()
            records[("records.jsonl", record["id"] if has_id else f"line {n}")] = record
    return records


def _cif_records() -> dict[tuple[str, str], dict]:
    records = {}
    with (CORPUS / "cif" / "id_prop.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    for n, (cid, *labels) in enumerate(rows[1:], start=2):
        path = CORPUS / "cif" / f"{cid}.cif"
        if cid and not path.exists():
            continue  # a missing file: only the folder shows it
        cif = path.read_text(errors="replace") if cid else None
        records[("cif", cid or f"line {n}")] = {"id": cid or None, "cif": cif, **dict(zip(LABELS, labels, strict=True))}
    return records


def _parquet_records() -> dict[tuple[str, str], dict]:
    rows = _parquet_rows()
    return {("parquet", r["id"] if r["id"] and r["id"].strip() else f"row {n}"): r for n, r in enumerate(rows)}


def write_input(name: str, folder: Path, good: list[dict]) -> Path:
    """The corpus input ``name`` (a key of ``INPUTS``) with the good rows appended, written inside ``folder``."""
    writer, target = {
        "records.jsonl": (write_jsonl_input, "mixed.jsonl"),
        "cif": (write_cif_input, "cifs"),
        "parquet": (write_parquet_input, "db.parquet"),
    }[name]
    return writer(folder / target, good)


def case_key(cid: str | None, source: str) -> str:
    """The ``expected.csv`` key of a rejected row: its id, else its line (JSONL, id_prop.csv) or Parquet row."""
    if cid:
        return cid
    if " row " in source:
        return f"row {source.rsplit(' row ', 1)[1]}"
    return f"line {source.rsplit(':', 1)[1]}"
