"""``mtc embed`` and ``mtc similar``: crystal embeddings of a database, and its crystals nearest to a query.

``embed`` runs the screen's path (``mtc.screen.score``: units, resumable parts, every row once, rejections with
reasons, every input format) with embeddings as the output: ``OUT/embeddings/part-*.parquet`` (``id``,
``embedding: list<float32>``, then the input's key columns, ``mtc.screen.output``), ``OUT/rejected/``,
the model's files in ``OUT/model/`` and ``OUT/embed.json`` (database, model URI, ``task``). ``similar`` reads that
folder a chunk at a time: a query is an id of the folder, or a structure file embedded with the very model stored
there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtc.cluster import Engine
from mtc.data.packing import Batching
from mtc.predict.predictor import DEFAULT_BATCHING, EMBEDDING, StructurePredictor
from mtc.screen.nearest import nearest
from mtc.screen.output import EMBEDDINGS, Output
from mtc.screen.processes import UNIT_ROWS
from mtc.screen.score import MODEL_DIR, ScreenError, ScreenSummary, score_database

STATE = "embed.json"
SIMILAR_SCHEMA = pa.schema(
    [("query", pa.string()), ("rank", pa.int32()), ("id", pa.string()), ("distance", pa.float64())]
)


def embed(
    db: Path,
    model_uri: str,
    out: Path,
    task: str | None = None,
    batching: Batching = DEFAULT_BATCHING,
    unit_rows: int = UNIT_ROWS,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    engine: Engine = Engine(),
    stages: int | None = None,
) -> ScreenSummary:
    """Embed every structure of ``db`` into ``out`` (resuming an interrupted run of the same inputs).

    Args:
        task: Embed only the task group whose head predicts ``task``; default: every group, concatenated.
        engine: Ray's actors, or this process for a small database (``mtc.cluster.Engine``).
        stages: On Ray, 1 or 2 stages (``mtc.screen.score.screen``); default 2 with GPUs.
    """
    output = Output(EMBEDDINGS, STATE, task)
    return score_database(
        db, model_uri, out, output, batching, unit_rows, workers, on_progress, engine=engine, stages=stages
    )[0]


def read_state(folder: Path) -> dict:
    """What ``embed`` recorded in ``folder`` (database, ``model`` URI, ``task``)."""
    path = Path(folder) / STATE
    if not path.exists():
        raise ScreenError(f"{folder} holds no {STATE}: not an `mtc embed` output folder")
    return json.loads(path.read_text())


def chunks(folder: Path, rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The folder's embeddings, about ``rows`` at a time (parts are joined up to that): (ids (n,), vectors (n, D))."""
    pending: list[pa.RecordBatch] = []
    for part in sorted((Path(folder) / EMBEDDINGS).glob("part-*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=rows, columns=["id", EMBEDDING]):
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= rows:
                yield _arrays(pending)
                pending = []
    if any(b.num_rows for b in pending):
        yield _arrays(pending)


def _arrays(batches: list[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray]:
    table = pa.Table.from_batches(batches).combine_chunks()
    flat = table.column(EMBEDDING).chunk(0).flatten().to_numpy()
    if flat.size % table.num_rows:
        raise ScreenError("embeddings of different lengths in one folder; embed the database again")
    return np.asarray(table.column("id").to_pylist(), dtype=object), flat.reshape(table.num_rows, -1)


def lookup(folder: Path, record_id: str) -> np.ndarray | None:
    """The embedding (D,) of ``record_id`` in ``folder``, or None."""
    for part in sorted((Path(folder) / EMBEDDINGS).glob("part-*.parquet")):
        ids = pq.read_table(part, columns=["id"]).column("id")
        row = pc.index(ids, record_id).as_py()
        if row >= 0:
            cell = pq.read_table(part, columns=[EMBEDDING]).column(EMBEDDING)[row]
            return np.asarray(cell.as_py(), np.float32)
    return None


def embed_file(folder: Path, path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, (Q, D) embeddings) of every structure in ``path``, with the model and task stored in ``folder``."""
    from mtc.predict.inputs import read_structure_files
    from mtc.registry.models import bundle_in

    records, unreadable = read_structure_files([path])
    predictor = StructurePredictor(bundle_in(Path(folder) / MODEL_DIR))
    embedded, rejected = predictor.embed_records(records, task=read_state(folder).get("task"))
    bad = pa.concat_tables([unreadable, rejected]).to_pylist()
    if bad:
        raise ScreenError(f"{path}: {bad[0]['id']} cannot be embedded: {bad[0]['reason']}: {bad[0]['detail']}")
    vectors = embedded.column(EMBEDDING).combine_chunks().flatten().to_numpy()
    return embedded.column("id").to_pylist(), vectors.reshape(embedded.num_rows, -1)


def similar(folder: Path, query: str, k: int = 10, metric: str = "euclidean", rows: int = 65536) -> pa.Table:
    """The ``k`` crystals of an ``embed`` folder nearest to ``query``, as a table of ``SIMILAR_SCHEMA``.

    ``query`` is a structure file when such a file exists (every structure in it is a query, none is left out of
    the results), else an id of the folder (left out of its own neighbours).
    """
    folder = Path(folder)
    read_state(folder)
    if Path(query).is_file() or Path(query).is_dir():
        ids, vectors = embed_file(folder, Path(query))
        exclude = [None] * len(ids)
    else:
        vector = lookup(folder, query)
        if vector is None:
            raise ScreenError(f"{query!r} is neither a structure file nor an id in {folder / EMBEDDINGS}")
        ids, vectors, exclude = [query], vector[None, :], [query]
    found = nearest(vectors, chunks(folder, rows), k, metric, exclude)
    rows_out = [
        {"query": q, "rank": rank, "id": cid, "distance": d}
        for q, pairs in zip(ids, found, strict=True)
        for rank, (cid, d) in enumerate(pairs, start=1)
    ]
    return _with_keys(folder, pa.Table.from_pylist(rows_out, schema=SIMILAR_SCHEMA))


def _with_keys(folder: Path, table: pa.Table) -> pa.Table:
    """``table`` (an ``id`` column) with the key columns ``embed`` wrote beside each of those ids (a formula...)."""
    parts = sorted((folder / EMBEDDINGS).glob("part-*.parquet"))
    keys = [f for f in pq.read_schema(parts[0]) if f.name not in ("id", EMBEDDING)] if parts else []
    if not keys:
        return table
    wanted = pa.array(sorted(set(table.column("id").to_pylist())), pa.string())
    found = pq.read_table(
        folder / EMBEDDINGS, columns=["id", *(f.name for f in keys)], filters=pc.field("id").isin(wanted)
    )
    rows = pc.index_in(table.column("id"), value_set=found.column("id").combine_chunks())
    for field in keys:
        table = table.append_column(field, found.column(field.name).take(rows))
    return table
