"""Structures -> graph rows (pure functions), and the Ray Data pipeline that writes graph shards."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtc.cluster import Engine
from mtc.config import FeaturizeConfig
from mtc.data.graph import build_graph, min_interatomic_distance
from mtc.data.ipc import from_ipc, to_ipc
from mtc.data.records import Rejection, StructureLimits, crystal_from_record, parse_json, parse_label, record_id
from mtc.data.shards import (
    MANIFEST,
    REJECTED,
    REJECTED_SCHEMA,
    ShardWriter,
    graph_schema,
    hash_files,
    read_manifest,
    remove_stale_staging,
    write_staged_shard,
)
from mtc.data.sources import InputError, ScannedSource, check_out_apart, scan_source

TRUSTED_PATH = "cif_path"  # set by the CIF-folder scan alone
OUTCOME_FIELDS = [pa.field("source", pa.string()), pa.field("reason", pa.string()), pa.field("detail", pa.string())]


def featurized_schema(label_columns: Sequence[str]) -> pa.Schema:
    """Graph columns, labels, then where the row came from and why it was rejected (null when kept).

    ``id`` is nullable here, unlike in the shards: a row without id is one of the rejected rows.
    """
    graph = graph_schema(label_columns)
    return pa.schema([graph.field("id").with_nullable(True), *list(graph)[1:], *OUTCOME_FIELDS])


def featurize_table(table: pa.Table, config: FeaturizeConfig, label_columns: Sequence[str]) -> pa.Table:
    """Featurize a batch of records (one per row) into graph rows; bad rows carry a reason instead.

    Args:
        table: rows ``id``, ``source`` and a structure payload (see ``mtc.data.records``).
        config: graph and validation parameters.
        label_columns: label columns to parse into float64 (null when missing).

    Returns:
        A table of ``featurized_schema(label_columns)`` with one row per input row, in order.
    """
    limits = StructureLimits(max_atoms=config.max_atoms, min_distance=config.min_distance, radius=config.radius)
    numbers, srcs, dsts, dists, outcomes = [], [], [], [], []
    labels = {c: [] for c in label_columns}
    ids = [record_id(i) for i in table.column("id").to_pylist()]
    for cid, record in zip(ids, table.to_pylist(), strict=True):
        try:
            if cid is None:
                raise Rejection("missing_id", "the row has no 'id' (null or empty)")
            if record.get("json") is not None:
                record = {**_json_payload(record.pop("json")), **record}
            values = {c: parse_label(record.get(c), c) for c in label_columns}
            crystal = crystal_from_record(record, limits)
            graph = build_graph(crystal.lattice, crystal.cart_coords, config.radius, config.max_neighbors)
            # On the graph, not before it: its shortest edge is free, a separate search would cost ~30 % more.
            closest = min_interatomic_distance(graph)
            if closest < limits.min_distance:
                raise Rejection(
                    "overlapping_atoms",
                    f"two atoms are {closest:.3f} Å apart, closer than {limits.min_distance} Å",
                )
        except Rejection as rejection:
            numbers.append(np.zeros(0, np.int8))
            srcs.append(np.zeros(0, np.int32))
            dsts.append(np.zeros(0, np.int32))
            dists.append(np.zeros(0, np.float32))
            outcomes.append((record.get("source"), rejection.reason, rejection.detail))
            for c in label_columns:
                labels[c].append(None)
            continue
        numbers.append(crystal.atomic_numbers.astype(np.int8))
        srcs.append(graph.edge_src)
        dsts.append(graph.edge_dst)
        dists.append(graph.edge_dist)
        outcomes.append((record.get("source"), None, None))
        for c in label_columns:
            labels[c].append(values[c])

    schema = featurized_schema(label_columns)
    columns = [
        pa.array(ids, pa.string()),
        _list_array(numbers, pa.int8()),
        _list_array(srcs, pa.int32()),
        _list_array(dsts, pa.int32()),
        _list_array(dists, pa.float32()),
        *(pa.array(labels[c], pa.float64()) for c in label_columns),
        *(pa.array([o[k] for o in outcomes], pa.string()) for k in range(3)),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _json_payload(text) -> dict:
    """A record's ``json`` text (JSONL, ASE frames, or a Parquet column) as its fields."""
    try:
        payload = parse_json(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise Rejection("unparseable_json", f"'json' is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise Rejection("unparseable_json", f"'json' holds a {type(payload).__name__}, not an object")
    payload.pop(TRUSTED_PATH, None)  # data never names a file to read; only a CIF folder's scan does
    return payload


def _list_array(parts: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    """Build list<value_type> from per-row numpy arrays with one concatenation (no per-element Python)."""
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int32, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


FIRST_ROW = "first_row"  # a block's first row in the input: its shard's place among the shards


def featurize_block(block: pa.Table, config: FeaturizeConfig, label_columns: Sequence[str], staging: str) -> pa.Table:
    """Featurize one block of records and write its graph rows as one shard in the ``staging`` folder.

    Runs where the block is (a Ray Data task, or this process), so graph rows never travel back to the driver.

    Args:
        block: ``featurize_table``'s input rows plus ``FIRST_ROW`` (the block's first row in the input, every row).

    Returns:
        One row: ``shard`` (its file name in ``staging``; null when every row was rejected), ``rows`` (graph
        rows written), ``read`` (rows in the block), ``first_row``, and ``rejected`` (the block's rejected rows,
        ``REJECTED_SCHEMA``, as Arrow IPC bytes).
    """
    first = block.column(FIRST_ROW)[0].as_py()
    table = featurize_table(block.drop_columns([FIRST_ROW]), config, label_columns)
    bad = pc.is_valid(table.column("reason"))
    good = table.filter(pc.invert(bad))
    name = f"rows-{first:012d}.parquet" if good.num_rows else None
    if name:
        write_staged_shard(Path(staging) / name, good, label_columns)
    rejected = table.filter(bad).select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA)
    return pa.table(
        {
            "shard": pa.array([name], pa.string()),
            "rows": [good.num_rows],
            "read": [table.num_rows],
            FIRST_ROW: [first],
            "rejected": [to_ipc(rejected)],
        }
    )


@dataclass
class FeaturizeSummary:
    """What a featurize run did, for the terminal and for tests."""

    out: Path
    n_read: int
    n_written: int
    rejected_by_reason: dict[str, int]
    seconds: float
    reused: bool = False
    manifest: dict = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def throughput(self) -> float:
        return self.n_read / self.seconds if self.seconds > 0 else float("nan")


class RejectionLimitError(InputError):
    """Too many rows were rejected; the shards were still written so the reasons can be read."""


def featurize(
    src: Path,
    out: Path,
    config: FeaturizeConfig,
    labels: Sequence[str] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    engine: Engine = Engine(),
) -> FeaturizeSummary:
    """Featurize ``src`` into graph shards in ``out``: with Ray Data, or in this process for a small input, as
    ``engine`` chooses (``mtc.cluster.Engine``; both write the same shards).

    Re-running with the same inputs and parameters reuses the shards. Raises InputError for input
    that cannot be read as a whole (before any work), RejectionLimitError when every row, or more
    than ``config.max_reject_rate`` of them, was rejected (after writing rejected.parquet).

    Args:
        on_progress: called with (rows done, rows in total) as batches finish.
    """
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    scanned = scan_source(src, labels, chunk_rows=4096)
    check_out_apart(src, out)
    params = config.graph_params()
    inputs_hash = hash_files(scanned.files)
    if (out / MANIFEST).exists():
        previous = read_manifest(out)
        if (previous["inputs_hash"], previous["params"], previous["label_columns"]) == (
            inputs_hash,
            params,
            scanned.label_columns,
        ):
            summary = _summary_from_manifest(out, previous, time.perf_counter() - started)
            check_rejection_rate(summary, config.max_reject_rate)
            return summary

    local = engine.start("featurize", scanned.n_rows) == "local"  # on Ray: checks the paths before any write
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    n_workers = 1 if local else _ray_workers(workers)
    blocks = _blocks(
        scanned.tables or _read_parquet_records(scanned), rows_per_block(scanned.n_rows, n_workers, config)
    )
    writer = ShardWriter(out)
    kwargs = {"config": config, "label_columns": scanned.label_columns, "staging": str(writer.staging)}
    if local:
        results = (featurize_block(block, **kwargs) for block in blocks)
    else:
        results = _featurize_on_ray(blocks, kwargs, n_workers)

    reasons: Counter[str] = Counter(r["reason"] for r in scanned.early_rejections)
    writer.reject(pa.Table.from_pylist(scanned.early_rejections, schema=REJECTED_SCHEMA))
    done = len(scanned.early_rejections)
    try:
        for result in results:
            for block in result.to_pylist():
                if block["shard"]:
                    writer.add(block["shard"], block["rows"], order=block[FIRST_ROW])
                rejected = from_ipc(block["rejected"])
                writer.reject(rejected, order=block[FIRST_ROW])
                reasons.update(rejected.column("reason").to_pylist())
                done += block["read"]
            if on_progress:
                on_progress(done, scanned.n_rows)
        manifest = writer.commit(
            {
                "source": str(src),
                "source_kind": scanned.kind,
                "inputs_hash": inputs_hash,
                "params": params,
                "label_columns": scanned.label_columns,
                "n_read": scanned.n_rows,
                "n_written": scanned.n_rows - sum(reasons.values()),
                "rejected_by_reason": dict(reasons),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    except BaseException:
        writer.abort()
        raise
    summary = FeaturizeSummary(
        out=out,
        n_read=scanned.n_rows,
        n_written=manifest["n_written"],
        rejected_by_reason=dict(reasons),
        seconds=time.perf_counter() - started,
        manifest=manifest,
    )
    check_rejection_rate(summary, config.max_reject_rate)
    return summary


def _ray_workers(workers: int | None) -> int:
    import ray

    return workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def _featurize_on_ray(blocks: list[pa.Table], kwargs: dict, n_workers: int) -> Iterator[pa.Table]:
    """``featurize_block`` results from Ray Data tasks on every CPU Ray has, a block per task, in no fixed order."""
    import ray

    ds = ray.data.from_arrow(blocks)
    # One stateless operator: Ray Data's per-operator reservation would hold back half the CPUs for outputs
    # (measured: 1.4x slower on 2 CPUs); this dataset's own context leaves every other pipeline as it is.
    ds.context.op_resource_reservation_enabled = False
    # Stateless work: plain tasks start faster than an actor pool and use every CPU Ray Data has.
    ds = ds.map_batches(
        featurize_block,
        fn_kwargs=kwargs,
        batch_size=None,  # the whole block: one task, one shard
        batch_format="pyarrow",
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=min(n_workers, len(blocks))),
    )
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def rows_per_block(n_rows: int, n_workers: int, config: FeaturizeConfig) -> int:
    """Rows per block (a task and a shard): equal blocks in whole rounds of one block per worker, as few rounds
    as ``config.rows_per_shard`` allows; at least ``config.batch_size`` rows where that cap allows.

    Few, large tasks: Ray Data notices a finished task up to 0.1 s late (its scheduler's wait), and blocks of
    one input differ in cost, so every round costs each worker an idle gap. 10,000 mp36k crystals on 2 CPUs:
    one round of two blocks 1.03-1.06 s, two rounds 1.36-1.39 s, eight tasks 1.45 s (median of 4 runs each).
    """
    blocks = math.ceil(n_rows / config.rows_per_shard / n_workers) * n_workers
    return min(config.rows_per_shard, max(config.batch_size, math.ceil(n_rows / max(1, blocks))))


def _blocks(tables: list[pa.Table], rows: int) -> list[pa.Table]:
    """The input cut into blocks of at most ``rows`` rows, each tagged with its first row's place in the input.

    Tables of one schema (the chunks of a JSONL scan, Parquet files alike) are cut as one: no short block at
    each chunk's end.
    """
    blocks, first = [], 0
    for _, group in itertools.groupby(tables, key=lambda table: table.schema):
        table = pa.concat_tables(list(group))
        for start in range(0, table.num_rows, rows):
            block = table.slice(start, rows)
            blocks.append(block.append_column(FIRST_ROW, pa.array([first] * block.num_rows, pa.int64())))
            first += block.num_rows
    return blocks


def _read_parquet_records(scanned: ScannedSource) -> list[pa.Table]:
    """Parquet inputs as record tables, each row tagged with its file and row."""
    import pyarrow.parquet as pq

    tables = []
    for path in scanned.parquet_files:
        table = pq.read_table(path)
        if TRUSTED_PATH in table.column_names:  # data never names a file to read; only a CIF folder's scan does
            table = table.drop_columns([TRUSTED_PATH])
        tables.append(
            table.append_column("source", pa.array([f"{path} row {i}" for i in range(table.num_rows)], pa.string()))
        )
    return tables


def check_rejection_rate(summary: FeaturizeSummary, max_reject_rate: float) -> None:
    """Raise RejectionLimitError when every row, or more than the allowed fraction, was rejected."""
    where = f"reasons in {summary.out / REJECTED}"
    if summary.n_written == 0:
        top = ", ".join(f"{r} ({n})" for r, n in Counter(summary.rejected_by_reason).most_common(3))
        raise RejectionLimitError(f"every one of the {summary.n_read} structures was rejected: {top}; {where}")
    rate = summary.n_rejected / summary.n_read
    if rate > max_reject_rate:
        raise RejectionLimitError(
            f"{summary.n_rejected} of {summary.n_read} structures ({rate:.1%}) were rejected, more than "
            f"--max-reject-rate {max_reject_rate:.0%}; {where}"
        )


def _summary_from_manifest(out: Path, manifest: dict, seconds: float) -> FeaturizeSummary:
    return FeaturizeSummary(
        out=out,
        n_read=manifest["n_read"],
        n_written=manifest["n_written"],
        rejected_by_reason=manifest["rejected_by_reason"],
        seconds=seconds,
        reused=True,
        manifest=manifest,
    )
