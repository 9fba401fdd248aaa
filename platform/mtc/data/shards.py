"""Graph shards on disk: the Arrow schema, the manifest, atomic writing and plain-pyarrow reading.

A shard folder holds ``part-00000.parquet``..., ``rejected.parquet`` and ``manifest.json``. The manifest
is written last, atomically; it names every shard with its row count, so a reader trusts exactly the
files of the last finished run and nothing a killed run left behind.
"""

from __future__ import annotations

import contextlib
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


class ShardWriter:
    """Writes graph rows into rolling Parquet shards inside a private staging folder.

    ``commit`` moves the shards and ``rejected.parquet`` into the destination and writes the manifest
    last; until then the destination keeps the previous finished run. A process killed before
    ``commit`` leaves only a ``.staging-*`` folder, which the next run removes.
    """

    def __init__(self, dest: Path, label_columns: Sequence[str], rows_per_shard: int = 4096):
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.schema = graph_schema(label_columns)
        self.rows_per_shard = rows_per_shard
        _previous_shards(self.dest)  # refuse a foreign folder now, before any work
        self.staging = self.dest / f".staging-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir()
        self.shards: list[dict] = []
        self.rejected: list[pa.Table] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0

    def write(self, table: pa.Table) -> None:
        """Append graph rows (columns of ``self.schema``), rolling to a new shard when one is full."""
        table = table.select(self.schema.names).cast(self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open_shard()
            take = min(self.rows_per_shard - self._rows_in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._rows_in_shard += take
            self.shards[-1]["rows"] += take
            offset += take
            if self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()

    def reject(self, table: pa.Table) -> None:
        """Append rows of rejected.parquet (columns of REJECTED_SCHEMA)."""
        if table.num_rows:
            self.rejected.append(table.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))

    def commit(self, manifest: dict) -> dict:
        """Publish the shards; returns the manifest written (with the shard list)."""
        self._close_shard()
        rejected = pa.concat_tables(self.rejected) if self.rejected else REJECTED_SCHEMA.empty_table()
        pq.write_table(rejected, self.staging / REJECTED)
        for stale in [*_previous_shards(self.dest), self.dest / MANIFEST]:
            stale.unlink(missing_ok=True)
        for shard in self.shards:
            os.replace(self.staging / shard["file"], self.dest / shard["file"])
        os.replace(self.staging / REJECTED, self.dest / REJECTED)
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "shards": self.shards}
        write_json_atomic(self.dest / MANIFEST, manifest)
        shutil.rmtree(self.staging, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _open_shard(self) -> None:
        name = f"part-{len(self.shards):05d}.parquet"
        self._writer = pq.ParquetWriter(self.staging / name, self.schema, compression="zstd")
        self.shards.append({"file": name, "rows": 0})
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
