"""The training state that survives a restart: one typed class, saved and restored in one place.

A checkpoint folder holds ``state.pt`` (tensors and plain numbers only, loaded with ``weights_only=True``)
and, once training has ended, ``model/`` (the best weights as a ``ModelBundle``). A run that finished its
epochs but failed afterwards (test evaluation, logging) resumes from its final checkpoint straight to the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtc.train.optim import EpochPlan

STATE_FILE = "state.pt"
STATE_VERSION = 1


@dataclass
class TrainState:
    """Model and loss (``objective``), optimiser, schedule, and what model selection has seen so far.

    Attributes:
        plan: the epochs the run trains in all (the schedule spans them); a time budget plans them after each epoch.
        epoch: epochs completed.
        best_score: lowest validation unit-free score so far (inf before the first evaluation).
        best_epoch: the epoch that reached it (-1 before).
        bad_epochs: epochs since it last improved.
        best_weights: the model's state_dict at ``best_epoch`` (CPU tensors), None before the first epoch.
        history: one ``{"epoch", "train_loss", "val_score"}`` per epoch, for the learning curves.
        finished: training has ended (all epochs, or early stopping); only the final steps remain.
    """

    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    plan: EpochPlan
    epoch: int = 0
    best_score: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False

    def observe(self, epoch: int, train_loss: float, val_score: float, model: nn.Module, patience: int) -> bool:
        """Record a finished epoch (keeping ``model``'s weights when it improved); returns True to stop early.

        A NaN score never improves, but the first epoch's weights are always kept, so a model exists.
        """
        improved = val_score < self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = val_score, epoch, 0
        else:
            self.bad_epochs += 1
        if improved or self.best_weights is None:
            self.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.epoch = epoch
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_score": val_score})
        return 0 < patience <= self.bad_epochs

    def save(self, folder: Path) -> Path:
        """Write ``state.pt`` into ``folder``; returns its path."""
        path = Path(folder) / STATE_FILE
        torch.save(
            {
                "version": STATE_VERSION,
                "objective": unwrap(self.objective).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "planned_epochs": self.plan.epochs,
                "epoch": self.epoch,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "best_weights": self.best_weights,
                "history": self.history,
                "finished": self.finished,
            },
            path,
        )
        return path

    def restore(self, folder: Path) -> None:
        """Load ``state.pt`` from ``folder`` into this state's objects (CPU tensors, ``weights_only``)."""
        saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        if saved.get("version") != STATE_VERSION:
            raise RuntimeError(
                f"checkpoint {folder} has training-state version {saved.get('version')}, this mtc reads "
                f"{STATE_VERSION}: start a new run instead of resuming this one"
            )
        unwrap(self.objective).load_state_dict(saved["objective"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.plan.epochs = saved.get("planned_epochs", self.plan.epochs)  # absent in checkpoints before budgets
        for name in ("epoch", "best_score", "best_epoch", "bad_epochs", "best_weights", "history", "finished"):
            setattr(self, name, saved[name])


@dataclass
class CheckpointClock:
    """When rank 0 writes the training state: after the first epoch of a session (so a restart soon has one), then
    once ``every_s`` seconds have passed since the last, and always when training has ended. Short epochs thus
    skip most checkpoints; a restart repeats at most ``every_s`` seconds of epochs (plus one).
    """

    every_s: float
    last: float | None = None  # time.perf_counter() of this session's last checkpoint

    def due(self, finished: bool, now: float) -> bool:
        return finished or self.last is None or now - self.last >= self.every_s

    def mark(self, now: float) -> None:
        self.last = now


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
