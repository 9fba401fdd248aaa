"""Raw structures -> predictions (or crystal embeddings) with a model bundle: featurize, collate, forward.

One output schema per model, built once: every slice, empty or not, has the same column types, so parts of a
screen or of a batch always concatenate.

The embedding of a crystal is the pooled crystal vector the heads read: with one task group (one shared trunk)
the trunk's (F,) vector; with several groups (``model.groups``, or ``model.shared_convs`` below ``n_conv``) the
groups' pooled vectors concatenated in group order, (n_groups * F,), or, given a task, the (F,) vector of the
group whose head predicts it. An ensemble embeds with its first member: each member learned its own space.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice, pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.data.packing import Batching, atom_counts
from mtc.data.shards import REJECTED_SCHEMA
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.model.calibration import LEVELS, Calibration
from mtc.model.domain import Domain
from mtc.model.ensemble import EnsembleInference
from mtc.model.inference import InferenceModel
from mtc.predict.inputs import RECORD_SCHEMA, structure_record
from mtc.tasks import TaskSpec, served

EMBEDDING = "embedding"
EMBEDDING_SCHEMA = pa.schema([("id", pa.string()), (EMBEDDING, pa.list_(pa.float32()))])
DEFAULT_INTERVAL = 0.9
# Atoms per forward pass by default (``benchmarks/bench_inference.py --work``): about the mean of batches of 256
# mp36k crystals (3,400 atoms; one of them 9,238), so as many calls, while a batch's memory stays near 120 MiB
# whatever the cells (48 supercells of 400-1,000 atoms among 48 small cells: 478 MiB in one count batch). Raise
# it on a GPU.
DEFAULT_BATCHING = Batching(atoms=4096)
FEATURIZE_ROWS = 64  # records featurized per call: the cut waits for at most this many rows
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # the frozen convolutions' dtype (None: the model's)


def computed_ahead(fn: Callable, items: Iterable, depth: int) -> Iterator:
    """``fn(item)`` for each item, in order; with ``depth`` >= 1 one background thread computes up to ``depth``
    results ahead of the caller, so that its work overlaps the caller's (graph building holds the GIL, a torch
    forward pass mostly releases it). An exception of ``fn`` is raised where its result would have been."""
    if depth < 1:
        yield from map(fn, items)
        return
    items = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="mtc-ahead") as pool:
        pending = deque(pool.submit(fn, item) for item in islice(items, depth))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, item) for item in islice(items, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()


class EmbeddingError(MtcError):
    """An embedding that cannot be made as asked (an unknown task, a structure the model cannot read)."""


def output_schema(tasks: list[TaskSpec], n_members: int = 1) -> pa.Schema:
    """``id``, then per served task: float32 ``<task>``, or int8 ``<task>`` (0/1) + float32 ``<task>_probability``.

    An ensemble (``n_members`` > 1) adds float32 ``<task>_std``, ``<task>_lo`` and ``<task>_hi`` per regression
    task (calibrated standard deviation and central interval), ``<task>_probability_std`` per binary task (the
    members' spread) and, last, string ``ood``: why a crystal lies outside the training domain (null: inside).
    Auxiliary tasks are trained, never served: they have no column.
    """
    fields = [pa.field("id", pa.string())]
    for task in served(tasks):
        if task.kind == "binary":
            fields += [pa.field(task.name, pa.int8()), pa.field(f"{task.name}_probability", pa.float32())]
            extra = ["_probability_std"]
        else:
            fields.append(pa.field(task.name, pa.float32()))
            extra = ["_std", "_lo", "_hi"]
        fields += [pa.field(f"{task.name}{suffix}", pa.float32()) for suffix in extra if n_members > 1]
    if n_members > 1:
        fields.append(pa.field("ood", pa.string()))
    return pa.schema(fields)


def bundle_schema(bundle: ModelBundle) -> pa.Schema:
    """The output schema of a bundle's predictions."""
    return output_schema([TaskSpec.model_validate(t) for t in bundle.model_config["tasks"]], bundle.n_members)


def check_interval(interval: float) -> float:
    """``interval`` if it is a level the calibration covers; MtcError otherwise."""
    if not LEVELS[0] <= interval <= LEVELS[-1]:
        raise MtcError(f"--interval {interval}: give the central interval as a fraction in [0.01, 0.99], e.g. 0.9")
    return interval


def check_precision(precision: str) -> str:
    """``precision`` if the frozen forward has it (float32, bfloat16); MtcError otherwise."""
    if precision not in PRECISIONS:
        raise MtcError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    return precision


class StructurePredictor:
    """One loaded model, ready to score tables of structure records (see ``mtc.data.records``).

    An ensemble bundle predicts the members' mean (regression) or mean probability (binary), with the members'
    spread scaled by the bundle's calibration into ``<task>_std`` and the central ``interval`` into
    ``<task>_lo`` / ``<task>_hi``.

    Args:
        bundle: The model.
        device: Where to run it.
        frozen: Forward with the frozen ``InferenceModel`` (default), or with ``model.eval()`` itself.
        interval: The central interval of ``<task>_lo`` / ``<task>_hi`` (ensembles only), in [0.01, 0.99].
        precision: ``float32`` or ``bfloat16``: the frozen forward's convolutions (see ``mtc.model.inference``).
        featurize_ahead: Slices of ``FEATURIZE_ROWS`` records whose graphs a background thread builds ahead of the
            forward pass (0: none, all in the caller's thread). For a process that has more than one core to itself.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        device: str | torch.device = "cpu",
        frozen: bool = True,
        interval: float = DEFAULT_INTERVAL,
        precision: str = "float32",
        featurize_ahead: int = 0,
    ):
        if check_precision(precision) != "float32" and not frozen:
            raise MtcError(f"--precision {precision} needs the frozen forward (frozen=True)")
        self.bundle = bundle
        self.device = torch.device(device)
        self.members = bundle.build_members(self.device)
        self.model = self.members[0]
        self.frozen = frozen
        self.dtype = PRECISIONS[precision]
        self.interval = check_interval(interval)
        self.calibration = Calibration.from_dict(bundle.calibration) if bundle.calibration else Calibration({})
        self.domain = Domain.from_dict(bundle.domain) if bundle.domain else None
        self.forward = self._forward()
        self.embedder = self._embedder()
        self.tasks = [TaskSpec.model_validate(t) for t in bundle.model_config["tasks"]]
        self.featurize_config = FeaturizeConfig(**bundle.graph_params)
        self.featurize_ahead = featurize_ahead
        self.schema = output_schema(self.tasks, bundle.n_members)

    def _forward(self):
        """Batch -> raw outputs: (B, T) for one model, (K, B, T) for an ensemble."""
        if len(self.members) == 1:
            return InferenceModel(self.model, self.dtype) if self.frozen else self.model
        if self.frozen:
            return EnsembleInference(self.members, dtype=self.dtype)
        return lambda batch: torch.stack([member(batch) for member in self.members])

    def _embedder(self):
        """What embeds: the model's own forward; for an ensemble its first member (the members' spaces differ)."""
        if len(self.members) == 1:
            return self.forward
        return InferenceModel(self.model, self.dtype) if self.frozen else self.model

    def with_interval(self, interval: float) -> StructurePredictor:
        """The same loaded model (shared, not copied) with another central interval for ``<task>_lo`` / ``_hi``."""
        other = copy.copy(self)
        other.interval = check_interval(interval)
        return other

    def to(self, device: str | torch.device) -> StructurePredictor:
        """Move the model to ``device`` (e.g. ``"cuda"``); returns self."""
        self.device = torch.device(device)
        for member in self.members:
            member.to(self.device)
        self.forward = self._forward()
        self.embedder = self._embedder()
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
        out = self.model.to_physical(self.forward(batch), self.bundle.mean, self.bundle.std).float()
        spread = None
        if out.dim() == 3:  # (K, B, T): the members' mean and spread
            out, spread = out.mean(0).cpu().numpy(), out.std(0, correction=0).cpu().numpy()
        else:
            out = out.cpu().numpy()
        columns = [graphs.column("id").cast(pa.string())]
        for k, task in enumerate(self.tasks):
            if task.auxiliary:
                continue
            if task.kind == "binary":
                columns += [pa.array((out[:, k] >= 0.5).astype(np.int8)), pa.array(out[:, k])]
                columns += [] if spread is None else [pa.array(spread[:, k])]
            else:
                columns.append(pa.array(out[:, k]))
                columns += [] if spread is None else self._uncertainty(task.name, out[:, k], spread[:, k])
        if spread is not None:
            columns.append(pa.array(self._out_of_domain(batch, spread), pa.string()))
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
        features = self.embedder.group_features(collate_arrow(graphs).to(self.device))
        vectors = torch.cat([features[g] for g in groups], dim=1).float().cpu().numpy()  # (B, D)
        offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
        embedding = pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()))
        return pa.Table.from_arrays([graphs.column("id").cast(pa.string()), embedding], schema=EMBEDDING_SCHEMA)

    def _out_of_domain(self, batch, spread: np.ndarray) -> list[str | None]:
        """Each crystal's out-of-domain reasons (``Domain.flags``); all null for a bundle without a domain."""
        if self.domain is None:
            return [None] * batch.n_crystals
        names = [t.name for t in self.tasks]
        spreads = {task: spread[:, names.index(task)] for task in self.domain.spread_max}
        atoms, index = batch.atomic_numbers.cpu().numpy(), batch.crystal_index.cpu().numpy()
        return self.domain.flags(atoms, index, batch.n_crystals, spreads)

    def _uncertainty(self, task: str, value: np.ndarray, spread: np.ndarray) -> list[pa.Array]:
        """``<task>_std``, ``_lo``, ``_hi`` of one regression task. Args: value, spread (B,)."""
        half = (self.calibration.factor(task, self.interval) * spread).astype(np.float32)
        std = (self.calibration.std_factor(task) * spread).astype(np.float32)
        return [pa.array(std), pa.array(value - half), pa.array(value + half)]

    def featurized(self, records: pa.Table) -> Iterator[pa.Table]:
        """Graph rows of records (``featurized_schema``; a rejected row has its ``reason``), ``FEATURIZE_ROWS`` at a
        time, built ``featurize_ahead`` slices ahead in a thread."""
        if "source" not in records.column_names:
            records = records.append_column("source", pa.array(["input"] * records.num_rows, pa.string()))
        slices = (records.slice(start, FEATURIZE_ROWS) for start in range(0, records.num_rows, FEATURIZE_ROWS))
        featurize = partial(featurize_table, config=self.featurize_config, label_columns=[])
        return computed_ahead(featurize, slices, self.featurize_ahead)

    def _score(self, tables: Iterable[pa.Table], batching: Batching, score_graphs: Callable[[pa.Table], pa.Table]):
        """Yields (graph rows with ``reason``, rejected mask, ``score_graphs`` of its good rows) per batch.

        The graph tables are cut by ``batching`` on their exact atom counts (a rejected row counts 0 atoms, 1
        crystal); every batch but the last is final (``pack`` is prefix-stable) and is scored at once, so no more
        than a batch and a table (plus those built ahead) are held. Graph rows cost ~12 bytes per edge, the forward
        pass ≥ 4 · atom_fea_len per edge: featurizing ahead of the cut costs no memory to speak of.
        """
        pending = None
        for graphs in tables:
            pending = graphs if pending is None else pa.concat_tables([pending, graphs])
            cuts = batching.cuts(atom_counts(pending))
            for first, end in pairwise(cuts[:-1]):
                yield self._scored(pending.slice(first, end - first), score_graphs)
            pending = pending.slice(cuts[-2])
        if pending is not None and pending.num_rows:
            yield self._scored(pending, score_graphs)

    @staticmethod
    def _scored(graphs: pa.Table, score_graphs: Callable[[pa.Table], pa.Table]):
        bad = pc.is_valid(graphs.column("reason"))
        return graphs, bad, score_graphs(graphs.filter(pc.invert(bad)))

    def score_records(
        self,
        records: pa.Table,
        batching: Batching,
        score_graphs: Callable[[pa.Table], pa.Table],
        schema: pa.Schema,
        graphs: pa.Table | None = None,
    ) -> tuple[pa.Table, pa.Table]:
        """Featurize records (``id``, ``source`` and a structure payload) and apply ``score_graphs`` to the good ones.

        ``graphs``: the records' graph rows, when they were built elsewhere (``featurized``; a two-stage screen's
        first stage); ``records`` then only need what ``score_graphs`` reads beside them.

        Returns:
            (the scores, of ``schema``; rejected rows of ``REJECTED_SCHEMA``); every input row is in one.
        """
        tables = self.featurized(records) if graphs is None else [graphs]
        parts, rejected = [schema.empty_table()], [REJECTED_SCHEMA.empty_table()]
        for batch, bad, scored in self._score(tables, batching, score_graphs):
            rejected.append(batch.filter(bad).select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))
            parts.append(scored)
        return pa.concat_tables(parts), pa.concat_tables(rejected)

    def predict_records(
        self, records: pa.Table, batching: Batching = DEFAULT_BATCHING, graphs: pa.Table | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """(predictions of ``self.schema``, rejected rows) of records, as ``score_records``."""
        return self.score_records(records, batching, self.predict_graphs, self.schema, graphs)

    def embed_records(
        self,
        records: pa.Table,
        batching: Batching = DEFAULT_BATCHING,
        task: str | None = None,
        graphs: pa.Table | None = None,
    ) -> tuple[pa.Table, pa.Table]:
        """(embeddings of ``EMBEDDING_SCHEMA``, rejected rows) of records, as ``score_records``."""
        self.embedding_groups(task)  # an unknown task fails here, also when every row is rejected
        return self.score_records(records, batching, partial(self.embed_graphs, task=task), EMBEDDING_SCHEMA, graphs)

    def embed(self, structures: Sequence, task: str | None = None, batching: Batching = DEFAULT_BATCHING) -> np.ndarray:
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
        embedded, rejected = self.embed_records(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), batching, task)
        if rejected.num_rows:
            first = rejected.to_pylist()[0]
            raise EmbeddingError(f"structure {first['id']} cannot be embedded: {first['reason']}: {first['detail']}")
        flat = embedded.column(EMBEDDING).combine_chunks().flatten().to_numpy()
        return flat.reshape(len(structures), self.embedding_dim(task))

    def row_schema(self) -> pa.Schema:
        """``self.schema`` plus ``error`` (null, or ``reason: detail`` of a rejected row)."""
        return self.schema.append(pa.field("error", pa.string()))

    def predict_rows(self, records: pa.Table, batching: Batching = DEFAULT_BATCHING) -> pa.Table:
        """One output row per input row, in input order: ``self.schema`` (null where rejected) plus ``error``.

        Ids are data here, not keys: repeated or missing ids keep their own rows.
        """
        parts = []
        for graphs, bad, predictions in self._score(self.featurized(records), batching, self.predict_graphs):
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
