"""Optimiser, learning-rate schedule (stepped once per epoch) and the epochs a time budget fits."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch

from mtc.config import OptimConfig


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]], trunk: Collection[str], lr: float, trunk_lr: float
) -> list[dict]:
    """Optimizer parameter groups: the trainable parameters at ``lr``, those named in ``trunk`` at ``lr * trunk_lr``.

    Frozen parameters (``requires_grad`` False) are left out; an empty group is left out.
    """
    others, trunk_params = [], []
    for name, param in named:
        if param.requires_grad:
            (trunk_params if name in trunk else others).append(param)
    groups = [{"params": others, "lr": lr}, {"params": trunk_params, "lr": lr * trunk_lr}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[torch.nn.Parameter] | list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over ``params`` (parameters, or groups with their own ``lr``) at ``cfg.lr``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


FINAL_SECONDS = 15.0  # a budgeted run keeps at least this for its final test, plots and model logging


@dataclass
class EpochPlan:
    """How many epochs the run trains in all: the config's ``epochs``, or fewer when a time budget is planned
    (``planned_epochs``). The cosine schedule reads it at every step, so it spans the plan as it stands."""

    epochs: int


def planned_epochs(done: int, most: int, seconds_per_epoch: float, seconds_left: float) -> int:
    """The epochs a run with ``seconds_left`` of its budget trains in all, after ``done`` epochs of
    ``seconds_per_epoch``: as many more as fit once the final test and logging have their time (an epoch's, at
    least ``FINAL_SECONDS``), at most ``most`` in all and never fewer than ``done`` (0 more: the run ends now)."""
    if seconds_per_epoch <= 0:
        return most
    more = math.floor((seconds_left - max(seconds_per_epoch, FINAL_SECONDS)) / seconds_per_epoch)
    return max(done, min(most, done + more))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, plan: EpochPlan
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Linear warm-up for ``warmup_epochs``, then cosine decay over ``plan.epochs`` / step milestones / plateau /
    constant."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.plateau_patience)

    def factor(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.scheduler == "cosine":
            span = max(1, plan.epochs - cfg.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - cfg.warmup_epochs) / span)))
        if cfg.scheduler == "step":
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
