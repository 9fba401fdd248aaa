"""The per-worker training loop that Ray Train runs on every rank (DDP over gloo or NCCL).

Rank 0 evaluates, logs to MLflow and writes checkpoints; every rank reports once per epoch and once
at the end, and every rank runs the same number of optimiser steps (a step only happens when all
ranks still have a batch), so collectives never wait on a rank that has finished.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtc.config import TrainConfig
from mtc.data.batching import CrystalBatch, collate_arrow
from mtc.model.bundle import ModelBundle
from mtc.model.losses import LossOutput, MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN
from mtc.train.evaluate import evaluate
from mtc.train.optim import build_optimizer, build_scheduler

STATE = "state.pt"


class Objective(nn.Module):
    """Model and loss in one module, so DDP also averages the learned loss weights' gradients."""

    def __init__(self, model: MultiTaskCGCNN, loss: MultiTaskLoss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: CrystalBatch) -> LossOutput:
        return self.loss(self.model(batch), batch.targets, batch.mask)


@dataclass
class Progress:
    """What survives a restart besides the weights."""

    epoch: int = 0
    best_score: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def observe(self, epoch: int, train_loss: float, val_score: float, patience: int) -> tuple[bool, bool]:
        """Record a finished epoch; returns (improved, stop early)."""
        improved = val_score < self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = val_score, epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_score": val_score})
        return improved, 0 < patience <= self.bad_epochs


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config``: train (TrainConfig dict), mean, std, graph_params,
    run_id, tracking_uri, threads."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.model_validate(loop_config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config.seed)
    torch.set_num_threads(loop_config["threads"])
    device = ray.train.torch.get_device()
    tasks = config.tasks

    model = MultiTaskCGCNN(tasks, groups=config.model.groups, **config.model.model_dump(exclude={"groups"}))
    loss_fn = MultiTaskLoss(
        tasks, config.loss.strategy, config.loss.weights, mean=loop_config["mean"], std=loop_config["std"]
    )
    objective = Objective(model, loss_fn)
    optimizer = build_optimizer(objective.parameters(), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.epochs)
    progress = Progress()
    best_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True)
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_state = saved["best_model"]
        progress = Progress(**saved["progress"])
    objective = ray.train.torch.prepare_model(objective)
    logger = _RankZeroLogger(loop_config) if rank == 0 else None
    if logger and checkpoint:
        logger.log_epoch({"epoch": progress.epoch, "resumed_from_epoch": progress.epoch})

    def evaluate_split(split: str):
        return evaluate(
            model,
            ray.train.get_dataset_shard(split),
            tasks,
            loop_config["mean"],
            loop_config["std"],
            config.batch_size,
            device,
        )

    n_nodes = _count_nodes(world)
    train_shard = ray.train.get_dataset_shard("train")
    for epoch in range(progress.epoch, config.epochs):
        started = time.perf_counter()
        objective.train()
        train_loss, n_steps, n_crystals = _train_epoch(objective, optimizer, train_shard, config, device, world)
        seconds = time.perf_counter() - started
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "steps": n_steps,
            "crystals_per_s": n_crystals * world / seconds,
            "workers": world,
            "nodes": n_nodes,
        }
        stop = torch.zeros(1)
        if rank == 0:
            val = evaluate_split("val").metrics
            metrics["val_score"] = val.pop("unit_free_score")
            metrics.update({f"val/{k}": v for k, v in val.items()})
            improved, stop_early = progress.observe(epoch + 1, train_loss, metrics["val_score"], config.patience)
            if improved or best_state is None:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            stop[0] = float(stop_early)
            logger.log_epoch(metrics)
        _step_scheduler(scheduler, metrics.get("val_score"))
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                state = {
                    "objective": _unwrap(objective).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_model": best_state,
                    "progress": asdict(progress),
                }
                torch.save(state, Path(folder) / STATE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if world > 1:
            dist.broadcast(stop, src=0)
        if stop.item():
            break

    final: dict[str, float] = {}
    if rank == 0:
        model.load_state_dict(best_state)
        bundle = ModelBundle.from_model(model, loop_config["mean"], loop_config["std"], loop_config["graph_params"])
        test = evaluate_split("test")
        final = {"best_epoch": progress.best_epoch, "best_val_score": progress.best_score}
        final.update({f"test/{k}": v for k, v in test.metrics.items()})
        logger.log_final(final, test, progress.history, tasks)
        with tempfile.TemporaryDirectory() as folder:
            bundle.save(Path(folder) / "model")
            torch.save({"progress": asdict(progress)}, Path(folder) / STATE)
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(final)


def _train_epoch(objective, optimizer, shard, config: TrainConfig, device, world: int) -> tuple[float, int, int]:
    """One pass over this rank's shard; returns (mean loss, steps, crystals seen on this rank)."""
    batches = _batches(shard, config, device)
    total, steps, crystals = 0.0, 0, 0
    while True:
        batch = next(batches, None)
        if not _all_ranks_have(batch is not None, world):
            break
        optimizer.zero_grad(set_to_none=True)
        out = objective(batch)
        out.total.backward()
        optimizer.step()
        total += float(out.total.detach())
        steps += 1
        crystals += batch.n_crystals
    for _ in batches:  # finish the epoch's iterator so the next epoch starts cleanly
        pass
    return total / max(steps, 1), steps, crystals


def _batches(shard, config: TrainConfig, device) -> Iterator[CrystalBatch]:
    for table in shard.iter_batches(
        batch_size=config.batch_size,
        batch_format="pyarrow",
        drop_last=True,
        local_shuffle_buffer_size=max(config.batch_size * 8, 2048),
    ):
        yield collate_arrow(table, config.tasks).to(device)


def _count_nodes(world: int) -> int:
    """Distinct Ray nodes the ranks run on (node ids, not IPs: test clusters share one IP)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return 1
    nodes: list[str | None] = [None] * world
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _all_ranks_have(have: bool, world: int) -> bool:
    """True when every rank has a batch for this step (a MIN all-reduce across ranks)."""
    if world == 1:
        return have
    flag = torch.tensor([1.0 if have else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _step_scheduler(scheduler, val_score: float | None) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        # every rank must take the same decision: ranks without a val score step with the same value
        scheduler.step(val_score if val_score is not None else scheduler.best)
    else:
        scheduler.step()


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class _RankZeroLogger:
    """MLflow logging from rank 0 into the run the driver created (plain MlflowClient calls)."""

    def __init__(self, loop_config: dict[str, Any]):
        import mlflow

        self.client = mlflow.MlflowClient(loop_config["tracking_uri"])
        self.run_id = loop_config["run_id"]

    def log_epoch(self, metrics: dict[str, float]) -> None:
        self._log(metrics, step=int(metrics["epoch"]))

    def log_final(self, final: dict[str, float], test, history, tasks) -> None:
        import pyarrow.parquet as pq

        from mtc.train.plots import learning_curves, parity_plot

        self._log(final, step=0)
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            pq.write_table(test.table(), folder / "test_predictions.parquet")
            self.client.log_artifact(self.run_id, str(folder / "test_predictions.parquet"), "predictions")
            (folder / "learning_curves.png").write_bytes(learning_curves(history))
            self.client.log_artifact(self.run_id, str(folder / "learning_curves.png"), "plots")
            for k, task in enumerate(tasks):
                rows = test.mask[:, k]
                if task.kind != "regression" or not rows.any():
                    continue
                png = parity_plot(
                    test.pred[rows, k], test.target[rows, k], task.name, task.unit, final[f"test/{task.name}/mae"]
                )
                (folder / f"parity_{task.name}.png").write_bytes(png)
                self.client.log_artifact(self.run_id, str(folder / f"parity_{task.name}.png"), "plots")

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(values), 900):
            self.client.log_batch(self.run_id, metrics=values[i : i + 900])
