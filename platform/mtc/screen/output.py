"""What each unit of a pass over a database writes (``mtc.screen.score``): predictions or embeddings.

Predictions (``mtc screen``) are one column per task. Embeddings (``mtc embed``) are the crystal vectors of
``mtc.predict.predictor`` (``id``, ``embedding``) followed by the input's key columns, its own scalar columns (a
formula, labels...), taken from the unit's records by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtc.data.packing import Batching
from mtc.predict.inputs import STRUCTURE_COLUMNS
from mtc.predict.predictor import DEFAULT_INTERVAL, EMBEDDING, EMBEDDING_SCHEMA, StructurePredictor

PREDICTIONS, EMBEDDINGS = "predictions", "embeddings"
RECORD_COLUMNS = (*STRUCTURE_COLUMNS, "json")
NO_KEYS = pa.schema([])


@dataclass(frozen=True)
class Output:
    """What each unit of a pass writes: predictions (``folder=PREDICTIONS``) or embeddings (``EMBEDDINGS``, of the
    groups ``task`` selects: see ``mtc.predict.predictor``, followed by the input's ``keys`` columns); ``state``
    names the file that records the pass; ``interval`` is the central interval of an ensemble's ``<task>_lo`` /
    ``<task>_hi``; ``precision`` that of the frozen forward's convolutions (float32 or bfloat16)."""

    folder: str = PREDICTIONS
    state: str = "screen.json"
    task: str | None = None
    keys: pa.Schema = NO_KEYS
    interval: float = DEFAULT_INTERVAL
    precision: str = "float32"

    def schema(self, predictor: StructurePredictor) -> pa.Schema:
        if self.folder == EMBEDDINGS:
            predictor.embedding_groups(self.task)  # an unknown task stops here, before any unit is scored
            return pa.schema([*EMBEDDING_SCHEMA, *self.keys])
        return predictor.schema

    def score(
        self, predictor: StructurePredictor, records: pa.Table, batching: Batching, graphs: pa.Table | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """(the unit's output, its rejected rows); ``records`` holds the ``keys`` columns; ``graphs``: the records'
        graph rows when they were built elsewhere (then ``records`` need only ``id`` and the keys)."""
        if self.folder == EMBEDDINGS:
            embedded, rejected = predictor.embed_records(records, batching, self.task, graphs)
            rows = pc.index_in(embedded.column("id"), value_set=records.column("id").combine_chunks())
            for field in self.keys:
                embedded = embedded.append_column(field, records.column(field.name).take(rows).cast(field.type))
            return embedded, rejected
        return predictor.predict_records(records, batching, graphs)


def key_columns(files: list[Path]) -> pa.Schema:
    """The input's scalar columns besides ``id``, ``source`` and the structure (a formula, labels...), with one type
    in every file: what ``mtc embed`` writes beside each embedding."""
    schemas = [pq.read_schema(f) for f in files]
    keys = []
    for field in schemas[0]:
        scalar = pa.types.is_string(field.type) or pa.types.is_integer(field.type)
        scalar = scalar or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type)
        same = all(field.name in s.names and s.field(field.name).type == field.type for s in schemas)
        if scalar and same and field.name not in ("id", "source", EMBEDDING, *RECORD_COLUMNS):
            keys.append(field)
    return pa.schema(keys)
