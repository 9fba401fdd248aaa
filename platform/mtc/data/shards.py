"""Graph shards on disk: the Arrow schema, the manifest, atomic writing and plain-pyarrow reading.

A shard folder holds ``part-00000.parquet``..., ``rejected.parquet`` and ``manifest.json``. The manifest
is written last, atomically; it names every shard with its row count, so a reader trusts exactly the
files of the last finished run and nothing a killed run left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtc.atomic import write_json_atomic
from mtc.errors import MtcError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.parquet"
GRAPH_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("atomic_numbers", pa.list_(pa.int8())),
    pa.field("edge_src", pa.list_(pa.int32())),
    pa.field("edge_dst", pa.list_(pa.int32())),
    pa.field("edge_dist", pa.list_(pa.float32())),
]
REJECTED_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


class ShardError(MtcError):
    """A shard folder that cannot be used (missing, unfinished, or of another schema version)."""


def graph_schema(label_columns: Sequence[str]) -> pa.Schema:
    """Schema of a shard: the graph columns, then one nullable float64 column per label."""
    return pa.schema([*GRAPH_FIELDS, *(pa.field(c, pa.float64()) for c in label_columns)])


def hash_files(paths: Iterable[Path]) -> str:
    """Content hash (blake2b) of the files, in the given order, names included."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished featurize run; raises ShardError when there is none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ShardError(f"{folder} holds no finished graph shards ({MANIFEST} missing): run `mtc featurize` first")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(
            f"{folder} was written with shard schema {manifest.get('schema_version')}, this mtc reads "
            f"{SCHEMA_VERSION}: featurize again"
        )
    return manifest


def shard_paths(folder: Path) -> list[Path]:
    """The shard files the manifest names, in order."""
    folder = Path(folder)
    return [folder / s["file"] for s in read_manifest(folder)["shards"]]


def read_shards(folder: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """All shards as one Arrow table (plain pyarrow, no Ray)."""
    paths = shard_paths(folder)
    if not paths:
        return graph_schema(read_manifest(folder)["label_columns"]).empty_table()
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)


def write_staged_shard(path: Path, table: pa.Table, label_columns: Sequence[str]) -> None:
    """Write graph rows (columns of ``graph_schema(label_columns)``, others dropped) as one zstd Parquet shard."""
    schema = graph_schema(label_columns)
    pq.write_table(table.select(schema.names).cast(schema), path, compression="zstd")


class ShardWriter:
    """Publishes graph shards written into its private staging folder (``write_staged_shard``, by any process
    that sees it), with the rejected rows and the manifest.

    ``commit`` moves the shards and ``rejected.parquet`` into the destination and writes the manifest
    last; until then the destination keeps the previous finished run. A process killed before
    ``commit`` leaves only a ``.staging-*`` folder, which the next run removes.
    """

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        _previous_shards(self.dest)  # refuse a foreign folder now, before any work
        self.staging = self.dest / f".staging-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir()
        self.staged: list[tuple[int, str, int]] = []
        self.rejected: list[tuple[int, pa.Table]] = []

    def add(self, name: str, rows: int, order: int) -> None:
        """Take ``name``, a shard of ``rows`` rows in the staging folder; shards are numbered by ``order``."""
        self.staged.append((order, name, rows))

    def reject(self, table: pa.Table, order: int = -1) -> None:
        """Add rows of rejected.parquet (columns of REJECTED_SCHEMA), placed by ``order`` like the shards."""
        if table.num_rows:
            self.rejected.append((order, table.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA)))

    def commit(self, manifest: dict) -> dict:
        """Publish the shards as ``part-00000.parquet``... and the rejected rows, each in ``order``; returns the
        manifest written (with the shard list)."""
        in_order = [table for _, table in sorted(self.rejected, key=lambda item: item[0])]
        rejected = pa.concat_tables(in_order) if in_order else REJECTED_SCHEMA.empty_table()
        pq.write_table(rejected, self.staging / REJECTED)
        for stale in [*_previous_shards(self.dest), self.dest / MANIFEST]:
            stale.unlink(missing_ok=True)
        shards = []
        for _, name, rows in sorted(self.staged):
            shards.append({"file": f"part-{len(shards):05d}.parquet", "rows": rows})
            os.replace(self.staging / name, self.dest / shards[-1]["file"])
        os.replace(self.staging / REJECTED, self.dest / REJECTED)
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "shards": shards}
        write_json_atomic(self.dest / MANIFEST, manifest)
        shutil.rmtree(self.staging, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _previous_shards(dest: Path) -> list[Path]:
    """The shard files a finished run's manifest names in ``dest``: the only files a new run may replace.

    Raises ShardError when ``dest`` holds ``part-*.parquet`` files but no manifest: they are someone else's
    (a Parquet dataset, perhaps the input itself), and deleting them would lose data.
    """
    manifest = dest / MANIFEST
    if not manifest.exists():
        foreign = sorted(p.name for p in dest.glob("part-*.parquet"))
        if foreign:
            raise ShardError(
                f"{dest} holds {len(foreign)} part-*.parquet file(s) ({', '.join(foreign[:3])}) but no {MANIFEST}: "
                "they are not mtc graph shards and would be overwritten; choose another --out"
            )
        return []
    return [dest / s["file"] for s in json.loads(manifest.read_text()).get("shards", [])]


def remove_stale_staging(dest: Path) -> None:
    """Remove what killed runs left behind in ``dest``."""
    for stale in Path(dest).glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
