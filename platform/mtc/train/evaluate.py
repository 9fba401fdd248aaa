"""Predictions over a whole split and their metrics (dataset-level, never averaged per batch)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from mtc.data.batching import CrystalBatch
from mtc.model.multitask import MultiTaskCGCNN
from mtc.tasks import TaskSpec
from mtc.train.metrics import task_metrics, unit_free_score


@dataclass
class Evaluation:
    """Physical predictions of a split. pred, target: (n, T) float; mask: (n, T) bool.

    ``metrics``: task name -> metric name -> value; ``score``: the unit-free selection score (lower is better).
    """

    ids: list[str]
    pred: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    tasks: Sequence[TaskSpec]
    metrics: dict[str, dict[str, float]]
    score: float

    def table(self) -> pa.Table:
        """id, then ``<task>`` (prediction) and ``<task>_true`` (null where missing) per task."""
        columns = {"id": pa.array(self.ids, pa.string())}
        for k, task in enumerate(self.tasks):
            columns[task.name] = pa.array(self.pred[:, k])
            columns[f"{task.name}_true"] = pa.array(self.target[:, k], mask=~self.mask[:, k])
        return pa.table(columns)


@torch.inference_mode()
def evaluate(
    model: MultiTaskCGCNN, batches: Iterable[CrystalBatch], tasks: Sequence[TaskSpec], mean, std
) -> Evaluation:
    """Run ``model`` (eval mode) over every batch of a split (collated, on the model's device)."""
    model.eval()
    ids, preds, targets, masks = [], [], [], []
    for batch in batches:
        preds.append(model.to_physical(model(batch), mean, std).float().cpu().numpy())
        targets.append(batch.targets.cpu().numpy())
        masks.append(batch.mask.cpu().numpy())
        ids.extend(batch.ids)
    n_tasks = len(tasks)
    pred = np.concatenate(preds) if preds else np.zeros((0, n_tasks), np.float32)
    target = np.concatenate(targets) if targets else np.zeros((0, n_tasks), np.float32)
    mask = np.concatenate(masks) if masks else np.zeros((0, n_tasks), bool)
    metrics = task_metrics(pred, target, mask, tasks)
    return Evaluation(ids, pred, target, mask, tasks, metrics, unit_free_score(metrics, tasks))
