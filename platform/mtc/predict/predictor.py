"""Raw structures -> predictions (or crystal embeddings) with a model bundle: featurize, collate, forward.

One output schema per model, built once: every slice, empty or not, has the same column types, so parts of a
screen or of a batch always concatenate.

The embedding of a crystal is the pooled crystal vector the heads read: with one task group (one shared trunk)
the trunk's (F,) vector; with several groups (``model.groups``, or ``model.shared_convs`` below ``n_conv``) the
groups' pooled vectors concatenated in group order, (n_groups * F,), or, given a task, the (F,) vector of the
group whose head predicts it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.data.shards import REJECTED_SCHEMA
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.model.inference import InferenceModel
from mtc.predict.inputs import RECORD_SCHEMA, structure_record
from mtc.tasks import TaskSpec, served

EMBEDDING = "embedding"
EMBEDDING_SCHEMA = pa.schema([("id", pa.string()), (EMBEDDING, pa.list_(pa.float32()))])


class EmbeddingError(MtcError):
    """An embedding that cannot be made as asked (an unknown task, a structure the model cannot read)."""


def output_schema(tasks: list[TaskSpec]) -> pa.Schema:
    """``id``, then per served task: float32 ``<task>``, or int8 ``<task>`` (0/1) + float32 ``<task>_probability``.

    Auxiliary tasks are trained, never served: they have no column.
    """
    fields = [pa.field("id", pa.string())]
    for task in served(tasks):
        if task.kind == "binary":
            fields += [pa.field(task.name, pa.int8()), pa.field(f"{task.name}_probability", pa.float32())]
        else:
            fields.append(pa.field(task.name, pa.float32()))
    return pa.schema(fields)


class StructurePredictor:
    """One loaded model, ready to score tables of structure records (see ``mtc.data.records``).

    Args:
        bundle: The model.
        device: Where to run it.
        frozen: Forward with the frozen ``InferenceModel`` (default), or with ``model.eval()`` itself.
    """

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu", frozen: bool = True):
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.build(self.device)
        self.frozen = frozen
        self.forward = InferenceModel(self.model) if frozen else self.model
        self.tasks = [TaskSpec.model_validate(t) for t in bundle.model_config["tasks"]]
        self.featurize_config = FeaturizeConfig(**bundle.graph_params)
        self.schema = output_schema(self.tasks)

    def to(self, device: str | torch.device) -> StructurePredictor:
        """Move the model to ``device`` (e.g. ``"cuda"``); returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.forward = InferenceModel(self.model) if self.frozen else self.model
        return self

    def output_names(self) -> list[str]:
        """Prediction columns: one per task, plus ``<task>_probability`` for binary tasks."""
        return self.schema.names[1:]

    @torch.inference_mode()
    def predict_graphs(self, graphs: pa.Table) -> pa.Table:
        """Predictions for featurized rows (graph-shard columns): a table of ``self.schema``, row for row."""
        if graphs.num_rows == 0:
            return self.schema.empty_table()
        batch = collate_arrow(graphs).to(self.device)
        out = self.model.to_physical(self.forward(batch), self.bundle.mean, self.bundle.std).float().cpu().numpy()
        columns = [graphs.column("id").cast(pa.string())]
        for k, task in enumerate(self.tasks):
            if task.auxiliary:
                continue
            if task.kind == "binary":
                columns += [pa.array((out[:, k] >= 0.5).astype(np.int8)), pa.array(out[:, k])]
            else:
                columns.append(pa.array(out[:, k]))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def embedding_groups(self, task: str | None = None) -> list[int]:
        """The task groups whose pooled vectors make the embedding: every group in order, or ``task``'s."""
        if task is None:
            return list(range(len(self.model.groups)))
        names = [t.name for t in self.tasks]
        if task not in names:
            raise EmbeddingError(f"the model has no task {task!r}; its tasks: {', '.join(names)}")
        return [self.model.trunk_of_task[names.index(task)]]

    def embedding_dim(self, task: str | None = None) -> int:
        """D, the length of an embedding: F per group embedded."""
        return len(self.embedding_groups(task)) * self.model.hparams["atom_fea_len"]

    @torch.inference_mode()
    def embed_graphs(self, graphs: pa.Table, task: str | None = None) -> pa.Table:
        """Embeddings of featurized rows: ``EMBEDDING_SCHEMA`` (``id``, ``embedding`` of D float32), row for row."""
        groups = self.embedding_groups(task)
        if graphs.num_rows == 0:
            return EMBEDDING_SCHEMA.empty_table()
        features = self.forward.group_features(collate_arrow(graphs).to(self.device))
        vectors = torch.cat([features[g] for g in groups], dim=1).float().cpu().numpy()  # (B, D)
        offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
        embedding = pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()))
        return pa.Table.from_arrays([graphs.column("id").cast(pa.string()), embedding], schema=EMBEDDING_SCHEMA)

    def _score(self, records: pa.Table, batch_size: int, score_graphs: Callable[[pa.Table], pa.Table]):
        """Yields (featurized slice with ``reason``, rejected mask, ``score_graphs`` of its good rows)."""
        if "source" not in records.column_names:
            records = records.append_column("source", pa.array(["input"] * records.num_rows, pa.string()))
        for start in range(0, records.num_rows, batch_size):
            graphs = featurize_table(records.slice(start, batch_size), self.featurize_config, [])
            bad = pc.is_valid(graphs.column("reason"))
            yield graphs, bad, score_graphs(graphs.filter(pc.invert(bad)))

    def score_records(
        self, records: pa.Table, batch_size: int, score_graphs: Callable[[pa.Table], pa.Table], schema: pa.Schema
    ) -> tuple[pa.Table, pa.Table]:
        """Featurize records (``id``, ``source`` and a structure payload) and apply ``score_graphs`` to the good ones.

        Returns:
            (the scores, of ``schema``; rejected rows of ``REJECTED_SCHEMA``); every input row is in one.
        """
        parts, rejected = [schema.empty_table()], [REJECTED_SCHEMA.empty_table()]
        for graphs, bad, scored in self._score(records, batch_size, score_graphs):
            rejected.append(graphs.filter(bad).select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))
            parts.append(scored)
        return pa.concat_tables(parts), pa.concat_tables(rejected)

    def predict_records(self, records: pa.Table, batch_size: int = 256) -> tuple[pa.Table, pa.Table]:
        """(predictions of ``self.schema``, rejected rows) of records, as ``score_records``."""
        return self.score_records(records, batch_size, self.predict_graphs, self.schema)

    def embed_records(
        self, records: pa.Table, batch_size: int = 256, task: str | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """(embeddings of ``EMBEDDING_SCHEMA``, rejected rows) of records, as ``score_records``."""
        self.embedding_groups(task)  # an unknown task fails here, also when every row is rejected
        return self.score_records(records, batch_size, partial(self.embed_graphs, task=task), EMBEDDING_SCHEMA)

    def embed(self, structures: Sequence, task: str | None = None, batch_size: int = 256) -> np.ndarray:
        """Embeddings of pymatgen ``Structure`` objects, in order.

        Args:
            structures: S structures.
            task: Embed only the group that predicts this task (see the module docstring); default every group.

        Returns:
            (S, D) float32.

        Raises:
            EmbeddingError: naming the first structure the model cannot read, and why.
        """
        rows = [structure_record(str(i), f"structure {i}", s) for i, s in enumerate(structures)]
        embedded, rejected = self.embed_records(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), batch_size, task)
        if rejected.num_rows:
            first = rejected.to_pylist()[0]
            raise EmbeddingError(f"structure {first['id']} cannot be embedded: {first['reason']}: {first['detail']}")
        flat = embedded.column(EMBEDDING).combine_chunks().flatten().to_numpy()
        return flat.reshape(len(structures), self.embedding_dim(task))

    def row_schema(self) -> pa.Schema:
        """``self.schema`` plus ``error`` (null, or ``reason: detail`` of a rejected row)."""
        return self.schema.append(pa.field("error", pa.string()))

    def predict_rows(self, records: pa.Table, batch_size: int = 256) -> pa.Table:
        """One output row per input row, in input order: ``self.schema`` (null where rejected) plus ``error``.

        Ids are data here, not keys: repeated or missing ids keep their own rows.
        """
        parts = []
        for graphs, bad, predictions in self._score(records, batch_size, self.predict_graphs):
            good = np.flatnonzero(~bad.to_numpy(zero_copy_only=False))
            # row i of the slice takes prediction j where good[j] == i; rejected rows take a null
            where = np.full(graphs.num_rows, -1, dtype=np.int64)
            where[good] = np.arange(len(good))
            take = pa.array(where, mask=where < 0)
            columns = [graphs.column("id")] + [predictions.column(n).take(take) for n in self.output_names()]
            reason, detail = graphs.column("reason"), graphs.column("detail")
            error = pc.if_else(bad, pc.binary_join_element_wise(reason, detail, ": "), pa.scalar(None, pa.string()))
            parts.append(pa.Table.from_arrays([*columns, error], schema=self.row_schema()))
        return pa.concat_tables([self.row_schema().empty_table(), *parts])
