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


@dataclass
class Predicted:
    """Physical predictions of some crystals: ids (n,), pred and target (n, T) float, mask (n, T) bool."""

    ids: list[str]
    pred: np.ndarray
    target: np.ndarray
    mask: np.ndarray


@torch.inference_mode()
def predict_batches(model: MultiTaskCGCNN, batches: Iterable[CrystalBatch], mean, std) -> list[Predicted]:
    """Run ``model`` (eval mode) over collated batches on its device: one ``Predicted`` per batch."""
    model.eval()
    return [
        Predicted(
            list(batch.ids),
            model.to_physical(model(batch), mean, std).float().cpu().numpy(),
            batch.targets.cpu().numpy(),
            batch.mask.cpu().numpy(),
        )
        for batch in batches
    ]


def in_batch_order(shares: Sequence[Sequence[Predicted]]) -> list[Predicted]:
    """Rank r's share holds batches r, r + world, r + 2 world, ... (``batches[r::world]``): all of them in order."""
    world, total = len(shares), sum(len(share) for share in shares)
    return [shares[k % world][k // world] for k in range(total)]


def evaluation(parts: Sequence[Predicted], tasks: Sequence[TaskSpec]) -> Evaluation:
    """The predictions of a whole split, in ``parts``, and their metrics."""
    n_tasks = len(tasks)
    pred = np.concatenate([p.pred for p in parts]) if parts else np.zeros((0, n_tasks), np.float32)
    target = np.concatenate([p.target for p in parts]) if parts else np.zeros((0, n_tasks), np.float32)
    mask = np.concatenate([p.mask for p in parts]) if parts else np.zeros((0, n_tasks), bool)
    metrics = task_metrics(pred, target, mask, tasks)
    ids = [i for p in parts for i in p.ids]
    return Evaluation(ids, pred, target, mask, tasks, metrics, unit_free_score(metrics, tasks))


def evaluate(
    model: MultiTaskCGCNN, batches: Iterable[CrystalBatch], tasks: Sequence[TaskSpec], mean, std
) -> Evaluation:
    """Run ``model`` (eval mode) over every batch of a split (collated, on the model's device)."""
    return evaluation(predict_batches(model, batches, mean, std), tasks)
