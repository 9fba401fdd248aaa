"""Raw structures -> predictions with a model bundle: featurize, collate, forward, de-normalise."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.data.shards import REJECTED_SCHEMA
from mtc.model.bundle import ModelBundle
from mtc.tasks import TaskSpec


class StructurePredictor:
    """One loaded model, ready to score tables of structure records (see ``mtc.data.records``)."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu"):
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.build(self.device)
        self.tasks = [TaskSpec.model_validate(t) for t in bundle.model_config["tasks"]]
        self.featurize_config = FeaturizeConfig(**bundle.graph_params)

    def output_names(self) -> list[str]:
        """Prediction columns: one per task, plus ``<task>_probability`` for binary tasks."""
        names = []
        for task in self.tasks:
            names += [task.name, f"{task.name}_probability"] if task.kind == "binary" else [task.name]
        return names

    @torch.inference_mode()
    def predict_graphs(self, graphs: pa.Table) -> dict[str, np.ndarray]:
        """Predictions for featurized rows (graph-shard columns): name -> (B,) array."""
        if graphs.num_rows == 0:
            return {name: np.zeros(0) for name in self.output_names()}
        batch = collate_arrow(graphs).to(self.device)
        out = self.model.to_physical(self.model(batch), self.bundle.mean, self.bundle.std).float().cpu().numpy()
        columns = {}
        for k, task in enumerate(self.tasks):
            if task.kind == "binary":
                columns[task.name] = (out[:, k] >= 0.5).astype(np.int8)
                columns[f"{task.name}_probability"] = out[:, k]
            else:
                columns[task.name] = out[:, k]
        return columns

    def predict_records(self, records: pa.Table, batch_size: int = 256) -> tuple[pa.Table, pa.Table]:
        """Score records (``id``, ``source`` and a structure payload).

        Returns:
            (predictions: ``id`` + output columns, rejected: ``id``, ``source``, ``reason``, ``detail``).
        """
        if "source" not in records.column_names:
            records = records.append_column("source", pa.array(["input"] * records.num_rows, pa.string()))
        parts, rejected = [], []
        for start in range(0, records.num_rows, batch_size):
            graphs = featurize_table(records.slice(start, batch_size), self.featurize_config, [])
            bad = pc.is_valid(graphs.column("reason"))
            rejected.append(graphs.filter(bad).select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA))
            good = graphs.filter(pc.invert(bad))
            columns = {"id": good.column("id"), **self.predict_graphs(good)}
            parts.append(pa.table(columns))
        return pa.concat_tables(parts), pa.concat_tables(rejected)
