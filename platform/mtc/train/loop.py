"""The per-worker training loop that Ray Train runs on every rank (DDP over gloo or NCCL).

Rank 0 evaluates, logs to MLflow and writes checkpoints; every rank reports once per epoch and once at
the end, and every rank runs the same number of optimiser steps (a step only happens when all ranks still
have a batch), so collectives never wait on a rank that has finished. Decisions that depend on the
validation score (the plateau schedule, early stopping) or on the clock (how many epochs a ``budget_minutes`` run
plans, which the cosine schedule spans) are rank 0's, broadcast, so replicas never diverge.
What the loss learns between epochs (DWA's weights) comes from task losses averaged over all ranks. With
``loss.gradient_surgery: pcgrad`` a step bypasses DDP's gradient hooks and averages the gradients itself.

Batches come from the worker's memory when the splits fit it, else from Ray Data each epoch
(``mtc.train.epoch_data``). Rank 0 checkpoints, and logs the epochs' metrics, after the first epoch and then at
most every ``checkpoint_every_s`` (``CheckpointClock``); every epoch logs where its time went (``time/*``).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtc.config import StrictModel, TrainConfig
from mtc.data.batching import CrystalBatch
from mtc.data.packing import Batching
from mtc.model.bundle import ModelBundle
from mtc.model.cgcnn import compile_convolutions
from mtc.model.losses import LossOutput, MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN
from mtc.model.surgery import pcgrad
from mtc.model.transfer import freeze, hold_frozen_batchnorm, start_from, trunk_parameter_names
from mtc.train.checkpoint import CheckpointClock, TrainState, unwrap
from mtc.train.epoch_data import SplitInMemory, arrow_batches
from mtc.train.evaluate import Evaluation, evaluate, evaluation, in_batch_order, predict_batches
from mtc.train.finetune import PARENT_ARTIFACT
from mtc.train.metrics import flatten_metrics
from mtc.train.optim import EpochPlan, build_optimizer, build_scheduler, param_groups, planned_epochs
from mtc.train.run_log import RunLogger

MODEL_DIR = "model"


class WorkerConfig(StrictModel):
    """What the driver hands every worker (validated again on the worker)."""

    train: TrainConfig
    mean: list[float]
    std: list[float]
    graph_params: dict[str, Any]
    run_id: str
    tracking_uri: str
    threads: int
    parent: bool = False  # the run starts from the model in its ``parent/`` artifacts (fine-tuning)
    checkpoint_dir: str | None = None  # in-process runs: rank 0 writes its checkpoints here, not to a temp folder
    in_memory: bool = False  # every rank got the whole training split, to hold in memory (``epoch_data``)
    deadline: float | None = None  # time.time() by which a run with ``train.budget_minutes`` ends


class LossModule(nn.Module):
    """Model and loss in one module, so DDP also averages the learned loss weights' gradients.

    ``precision`` ``bfloat16`` runs the model's forward under bfloat16 autocast (the model keeps its heads in float32).
    """

    def __init__(self, model: MultiTaskCGCNN, loss: MultiTaskLoss, precision: str = "float32"):
        super().__init__()
        self.model = model
        self.loss = loss
        self.autocast = precision == "bfloat16"

    def forward(self, batch: CrystalBatch) -> LossOutput:
        with torch.autocast(batch.targets.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            outputs = self.model(batch)
        return self.loss(outputs, batch.targets, batch.mask)


@dataclass
class _Rank:
    """Where this worker runs."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is a ``WorkerConfig`` as a dict."""
    import ray.train
    import ray.train.torch

    config = WorkerConfig.model_validate(loop_config)
    ctx = ray.train.get_context()
    where = _Rank(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.manual_seed(config.train.seed)
    torch.set_num_threads(config.threads)
    model, state = build(config)
    resumed = _restore(state)
    if config.parent and not resumed:
        _start_from_parent(config, model)
    state.objective = ray.train.torch.prepare_model(state.objective)
    logger = RunLogger(config.tracking_uri, config.run_id) if where.is_zero else None
    if logger and resumed:
        logger.log_metrics({"epoch": state.epoch, "resumed_from_epoch": state.epoch}, step=state.epoch)
    if not state.finished:
        _train_epochs(config, model, state, where, logger)
    _finish(config, model, state, where, logger)


def build_model(train: TrainConfig, radius: float) -> MultiTaskCGCNN:
    """The model of a config; its Gaussian expansion spans the shards' neighbour ``radius`` (Å)."""
    hparams = train.model.model_dump(exclude={"groups"})
    return MultiTaskCGCNN(train.tasks, groups=train.model.groups, dmax=radius, **hparams)


def build(config: WorkerConfig) -> tuple[MultiTaskCGCNN, TrainState]:
    """The model and a fresh training state."""
    train = config.train
    model = build_model(train, config.graph_params["radius"])
    if train.compile:
        compile_convolutions(model)
    loss = MultiTaskLoss(
        train.tasks, train.loss.strategy, train.loss.weights, config.mean, config.std, train.loss.temperature
    )
    objective = LossModule(model, loss, train.precision)
    params = objective.parameters()
    if config.parent:
        frozen = train.finetune.frozen_convs(train.model.n_conv)
        if frozen is not None:
            freeze(model, frozen)
        trunk = {f"model.{name}" for name in trunk_parameter_names(model)}
        params = param_groups(objective.named_parameters(), trunk, train.optim.lr, train.finetune.trunk_lr)
    optimizer = build_optimizer(params, train.optim)
    plan = EpochPlan(train.epochs)
    return model, TrainState(objective, optimizer, build_scheduler(optimizer, train.optim, plan), plan)


def _start_from_parent(config: WorkerConfig, model: MultiTaskCGCNN) -> None:
    """Loads the source model the driver logged under the run's ``parent/`` artifacts (trunk, shared heads)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.MlflowClient(config.tracking_uri).download_artifacts(config.run_id, PARENT_ARTIFACT, folder)
        source = ModelBundle.load(Path(path))
    norm = (config.mean, config.std)
    start_from(model, source.model_config, source.state_dict, (source.mean, source.std), norm)


def _restore(state: TrainState) -> bool:
    """Load the latest checkpoint of this run into ``state`` (after a worker failure or ``--resume``)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        state.restore(Path(folder))
    return True


class _EpochData:
    """This rank's training batches of an epoch and the validation batches (see ``mtc.train.epoch_data``)."""

    def __init__(self, config: WorkerConfig, where: _Rank):
        self.config, self.where = config, where
        self._train: SplitInMemory | None = None
        self._val: list[CrystalBatch] | None = None

    def train(self, epoch: int) -> Iterator[CrystalBatch]:
        import ray.train

        train, device = self.config.train, self.where.device
        shard = ray.train.get_dataset_shard("train")
        if not self.config.in_memory:
            yield from _batches(shard, train, device)
            return
        if self._train is None:
            self._train = SplitInMemory.read(shard)
        where = self.where
        tables = self._train.epoch_batches(train.seed, epoch, where.rank, where.world, _batching(train))
        yield from arrow_batches(tables, train.tasks, device, orbit_rounds(train))

    def val(self) -> Iterable[CrystalBatch]:
        """The whole validation split from Ray Data, or this rank's share of it held in memory."""
        if not self.config.in_memory:
            return _split_batches(self.config.train, "val", self.where.device)
        if self._val is None:
            import ray.train

            train = self.config.train
            split = SplitInMemory.read(ray.train.get_dataset_shard("val"))
            where = self.where
            rounds = orbit_rounds(train)
            self._val = split.collated(_batching(train), train.tasks, where.device, where.rank, where.world, rounds)
        return self._val


def _validate(model: MultiTaskCGCNN, data: _EpochData, config: WorkerConfig, where: _Rank) -> Evaluation | None:
    """The validation split's evaluation, on rank 0 (None on the others).

    Held in memory, the split's batches are shared out: rank r predicts batches r, r + world, ... with rank 0's
    BatchNorm statistics (each rank's moved with its own last batch), and rank 0 gathers them in batch order, so
    the metrics are those of one process evaluating them all, in 1/world of the time. From Ray Data, rank 0 reads
    and evaluates the whole split.
    """
    train = config.train
    if where.world == 1 or not config.in_memory:
        return evaluate(model, data.val(), train.tasks, config.mean, config.std) if where.is_zero else None
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    shares: list[Any] = [None] * where.world
    dist.all_gather_object(shares, predict_batches(model, data.val(), config.mean, config.std))
    return evaluation(in_batch_order(shares), train.tasks) if where.is_zero else None


def _batching(train: TrainConfig) -> Batching:
    """The in-memory path's batches: ``batch_atoms`` atoms when set, else ``batch_size`` crystals."""
    return Batching(atoms=train.batch_atoms, crystals=train.batch_size)


def _train_epochs(config: WorkerConfig, model, state: TrainState, where: _Rank, logger: RunLogger | None) -> None:
    train = config.train
    n_nodes = _count_nodes(where.world)
    data = _EpochData(config, where)
    clock = CheckpointClock(train.checkpoint_every_s)
    after: dict[str, float] = {}  # the previous epoch's log, checkpoint and report seconds (they follow its metrics)
    first = state.epoch + 1
    steady_since = None  # the start of this session's second epoch: the first pays for compiling and loading
    for epoch in range(first, train.epochs + 1):
        started = time.perf_counter()
        steady_since = started if epoch == first + 1 else steady_since
        state.objective.train()
        hold_frozen_batchnorm(model)
        order = torch.Generator().manual_seed(_order_seed(train.seed, epoch))
        done = _train_epoch(state, data.train(epoch), train, where, order)
        metrics = {
            "epoch": epoch,
            "train_loss": done.loss,
            "lr": state.optimizer.param_groups[0]["lr"],
            "steps": done.steps,
            "crystals_per_s": done.crystals * where.world / (time.perf_counter() - started),
            "workers": where.world,
            "nodes": n_nodes,
            "weight_norm": _weight_norm(model),
            "time/data_s": done.data_s,
            "time/steps_s": done.steps_s,
            **after,
            **_loss_weights(state.objective, train),  # DWA: the weights this epoch trained with
        }
        if train.loss.strategy == "dwa":
            sums, counts = _mean_over_ranks([done.task_sums, done.task_counts], where.world)
            unwrap(state.objective).loss.end_epoch(sums / counts)  # the same on every rank
        stop = False
        evaluating = time.perf_counter()
        val = _validate(model, data, config, where)
        if val is not None:  # rank 0
            metrics["time/eval_s"] = time.perf_counter() - evaluating
            metrics["val_score"] = val.score
            metrics.update(flatten_metrics("val", val.metrics))
            stop = state.observe(epoch, done.loss, val.score, model, train.patience)
            if config.deadline is not None:
                per_epoch = _seconds_per_epoch(epoch - first + 1, started, steady_since)
                state.plan.epochs = planned_epochs(epoch, train.epochs, per_epoch, config.deadline - time.time())
                metrics["planned_epochs"] = state.plan.epochs
        val_score, stop, state.plan.epochs = _from_rank_zero(
            metrics.get("val_score", math.nan), stop, state.plan.epochs, where.world
        )
        _step_scheduler(state.scheduler, val_score)
        state.finished = stop or epoch >= state.plan.epochs
        save = clock.due(state.finished, time.perf_counter())
        logging = time.perf_counter()
        if logger:
            logger.add_epoch(metrics, step=epoch)
            if save:
                logger.flush()  # before the checkpoint: a resumed run never lacks the epochs it skips
        log_s = time.perf_counter() - logging
        checkpoint_s, report_s = _report(metrics, state, where, config.checkpoint_dir, checkpoint=save)
        if save:
            clock.mark(time.perf_counter())
        after = {"time/log_s": log_s, "time/checkpoint_s": checkpoint_s, "time/report_s": report_s}
        if state.finished:
            break


@dataclass
class _Epoch:
    """One epoch on one rank: mean loss, steps, crystals, (T,) sums of each task's loss and label counts, and the
    seconds spent waiting for batches (``data_s``) and in the steps (``steps_s``)."""

    loss: float
    steps: int
    crystals: int
    task_sums: torch.Tensor
    task_counts: torch.Tensor
    data_s: float
    steps_s: float


def _train_epoch(
    state: TrainState, batches: Iterator[CrystalBatch], config: TrainConfig, where: _Rank, generator: torch.Generator
) -> _Epoch:
    """One pass over this rank's batches; ``generator`` orders the tasks of PCGrad's projections."""
    total, steps, crystals = 0.0, 0, 0
    task_sums = torch.zeros(len(config.tasks), dtype=torch.float64)
    task_counts = torch.zeros(len(config.tasks), dtype=torch.float64)
    started = time.perf_counter()
    data_s = 0.0
    while True:
        waiting = time.perf_counter()
        batch = next(batches, None)
        data_s += time.perf_counter() - waiting
        if not _all_ranks_have(batch is not None, where.world):
            break
        state.optimizer.zero_grad(set_to_none=True)
        if config.loss.gradient_surgery == "pcgrad":
            out = _pcgrad_backward(unwrap(state.objective), batch, generator, where.world)
        else:
            out = state.objective(batch)
            out.total.backward()
        state.optimizer.step()
        total += float(out.total.detach())
        task_sums += (out.per_task.detach() * out.counts).double().cpu()
        task_counts += out.counts.double().cpu()
        steps += 1
        crystals += batch.n_crystals
    waiting = time.perf_counter()
    for _ in batches:  # finish the epoch's iterator so the next epoch starts cleanly
        pass
    data_s += time.perf_counter() - waiting
    steps_s = time.perf_counter() - started - data_s
    return _Epoch(total / max(steps, 1), steps, crystals, task_sums, task_counts, data_s, steps_s)


def _pcgrad_backward(objective: LossModule, batch: CrystalBatch, generator: torch.Generator, world: int) -> LossOutput:
    """Sets ``.grad`` of every parameter: PCGrad of the task gradients on the shared parameters, the plain
    gradient of the total loss on the others (heads, unshared trunks, learned loss weights).

    Runs on the unwrapped module, so DDP's hooks never fire; the gradients are averaged over ranks here instead,
    per task and before the projection, which is PCGrad of the global batch's task gradients: every rank then
    projects the same numbers in the same task order (``generator`` is seeded alike), so replicas stay identical.
    """
    out = objective(batch)
    shared = objective.model.shared_parameters()
    shared_ids = {id(p) for p in shared}
    others = [p for p in objective.parameters() if p.requires_grad and id(p) not in shared_ids]
    per_task = [_grads(term, shared, retain_graph=True) for term in out.terms] if shared else []
    rest = _grads(out.total, others, retain_graph=False)
    averaged = _mean_over_ranks([g for task in per_task for g in task] + rest, world)
    n_shared = len(shared)
    tasks = [averaged[k * n_shared : (k + 1) * n_shared] for k in range(len(per_task))]
    combined = pcgrad(tasks, generator) if shared else []
    for param, grad in zip(shared + others, combined + averaged[len(tasks) * n_shared :], strict=True):
        param.grad = grad
    return out


def _grads(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool) -> list[torch.Tensor]:
    """d loss / d params, zeros for parameters ``loss`` does not depend on (another group's convolutions)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _mean_over_ranks(tensors: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    """Each tensor averaged over the ranks, in one all-reduce; every rank gets the same values."""
    if world == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]


def _order_seed(seed: int, epoch: int) -> int:
    """PCGrad's task-order seed for an epoch: the same on every rank, and again after a resume."""
    return seed * 1_000_003 + epoch


def orbit_rounds(train: TrainConfig) -> int | None:
    """Refinement rounds of the orbit batches ``train`` runs on (its convolutions one after another), or None."""
    return train.model.n_conv if train.orbit_batches else None


def _split_batches(train: TrainConfig, split: str, device) -> Iterator[CrystalBatch]:
    """A whole split from Ray Data, collated batch by batch."""
    import ray.train

    tables = ray.train.get_dataset_shard(split).iter_batches(batch_size=train.batch_size, batch_format="pyarrow")
    return arrow_batches(tables, train.tasks, device, orbit_rounds(train))


def _report(
    metrics: dict[str, float],
    state: TrainState,
    where: _Rank,
    checkpoint_dir: str | None,
    bundle: ModelBundle | None = None,
    checkpoint: bool = True,
) -> tuple[float, float]:
    """Every rank reports; with ``checkpoint``, rank 0 attaches the checkpoint (the training state, and the model
    once finished), written to a temporary folder that Ray Train persists, or to ``checkpoint_dir`` (in-process
    runs: nothing persists it). Returns the seconds spent writing the checkpoint and in ``ray.train.report``."""
    import ray.train

    if not (where.is_zero and checkpoint):
        reporting = time.perf_counter()
        ray.train.report(metrics)
        return 0.0, time.perf_counter() - reporting
    with nullcontext(checkpoint_dir) if checkpoint_dir else tempfile.TemporaryDirectory() as folder:
        saving = time.perf_counter()
        state.save(Path(folder))
        if bundle is not None:
            bundle.save(Path(folder) / MODEL_DIR)
        reporting = time.perf_counter()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        return reporting - saving, time.perf_counter() - reporting


def _finish(config: WorkerConfig, model, state: TrainState, where: _Rank, logger: RunLogger | None) -> None:
    """Rank 0: the best epoch's weights on the test split, logged, and the final checkpoint with the model."""
    if not where.is_zero:
        _report({}, state, where, config.checkpoint_dir)
        return
    model.load_state_dict(state.best_weights)
    test = evaluate(
        model, _split_batches(config.train, "test", where.device), config.train.tasks, config.mean, config.std
    )
    final = {"best_epoch": state.best_epoch, "best_val_score": state.best_score}
    final.update(flatten_metrics("test", test.metrics))
    logger.log_final(final, test, state.history, config.train.tasks)
    bundle = ModelBundle.from_model(model, config.mean, config.std, config.graph_params)
    _report(final, state, where, config.checkpoint_dir, bundle)


def _batches(shard, config: TrainConfig, device) -> Iterator[CrystalBatch]:
    """A Ray Data shard's batches of one epoch, shuffled in a local buffer, the last partial batch dropped."""
    tables = shard.iter_batches(
        batch_size=config.batch_size,
        batch_format="pyarrow",
        drop_last=True,
        local_shuffle_buffer_size=max(config.batch_size * 8, 2048),
    )
    return arrow_batches(tables, config.tasks, device, orbit_rounds(config))


def _count_nodes(world: int) -> int:
    """Distinct Ray nodes the ranks run on (node ids, not IPs: test clusters share one IP)."""
    import ray

    if world == 1:
        return 1
    nodes: list[str | None] = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return len(set(nodes))


def _all_ranks_have(have: bool, world: int) -> bool:
    """True when every rank has a batch for this step (a MIN all-reduce across ranks)."""
    if world == 1:
        return have
    flag = torch.tensor([1.0 if have else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _seconds_per_epoch(epochs_this_session: int, started: float, steady_since: float | None) -> float:
    """Seconds per epoch so far (``time.perf_counter`` stamps): the epochs from this session's second on, once one is
    timed (the first pays for compiling and loading), else the first alone (``started``)."""
    if steady_since is None:
        return time.perf_counter() - started
    return (time.perf_counter() - steady_since) / (epochs_this_session - 1)


def _from_rank_zero(val_score: float, stop: bool, planned: int, world: int) -> tuple[float, bool, int]:
    """Rank 0's validation score, early-stopping decision and planned epochs, on every rank."""
    if world == 1:
        return val_score, stop, planned
    values = torch.tensor([val_score, float(stop), float(planned)], dtype=torch.float64)
    dist.broadcast(values, src=0)
    return float(values[0]), bool(values[1]), int(values[2])


def _step_scheduler(scheduler, val_score: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_score)
    else:
        scheduler.step()


def _weight_norm(model: nn.Module) -> float:
    """L2 norm of every parameter: a cheap fingerprint that must agree across DDP replicas."""
    with torch.no_grad():
        return float(torch.sqrt(sum(p.detach().double().square().sum() for p in model.parameters())))


def _loss_weights(objective: nn.Module, config: TrainConfig) -> dict[str, float]:
    """Task weights that change during training (``exp(-s_k)`` of ``uncertainty``, ``dwa``'s); none when fixed."""
    if config.loss.strategy == "fixed":
        return {}
    loss = unwrap(objective).loss
    return {f"loss_weight/{t.name}": float(w) for t, w in zip(config.tasks, loss.task_weights(), strict=True)}
