"""Start a model from another one (fine-tuning): the trunk along each task's path, the heads of shared tasks,
frozen layers.

A task's *path* is the chain of trunk modules its prediction goes through: the embedding (with the element table),
then convolution 1 .. n_conv, wherever the sharing layout puts them (a group's trunk, the shared stem or a group's
branch). Two models with the same width and depth have paths of the same shapes whatever their layouts, so weights
move position by position: each module of the new model takes the module at the same position on the source's
path of a task it serves (a task the source has, else the source's first task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mtc.model.multitask import MultiTaskCGCNN, model_from_config

TRUNK_HPARAMS = ("atom_fea_len", "n_conv", "dmin", "dmax", "step")


def trunk_path(model: MultiTaskCGCNN, k: int) -> list[tuple[str, ...]]:
    """State-dict key prefixes of task ``k``'s path: (embedding, element table), then one per convolution."""
    group, n_conv = model.trunk_of_task[k], model.hparams["n_conv"]
    if model.shared_convs is None:
        trunk = f"trunks.{group}."
        convs = [f"{trunk}convs.{i}." for i in range(n_conv)]
    else:
        trunk, shared = "trunks.0.", model.shared_convs
        convs = [f"{trunk}convs.{i}." for i in range(shared)]
        convs += [f"branches.{group}.{i}." for i in range(n_conv - shared)]
    return [(f"{trunk}embedding.", f"{trunk}element_table"), *((conv,) for conv in convs)]


@dataclass
class Transfer:
    """What ``start_from`` took from the source: trunk tensors copied, heads kept (by task name) and new."""

    trunk_tensors: int = 0
    kept_heads: list[str] = field(default_factory=list)
    new_heads: list[str] = field(default_factory=list)


def start_from(
    model: MultiTaskCGCNN,
    source_config: Mapping,
    source_state: Mapping[str, torch.Tensor],
    source_norm: tuple[Sequence[float], Sequence[float]],
    norm: tuple[Sequence[float], Sequence[float]],
) -> Transfer:
    """Loads a source model's trunk and its heads of the tasks both models have into ``model`` (in place).

    A kept regression head's last layer is rescaled from the source's normaliser to this model's, so it predicts
    the same physical values as in the source. Heads of other tasks, or of another shape or kind, stay fresh.

    Args:
        model: The new model (any sharing layout), T tasks.
        source_config: The source's ``MultiTaskCGCNN`` config; the same TRUNK_HPARAMS as ``model``.
        source_state: The source's state_dict.
        source_norm: The source's (mean, std), one per source task.
        norm: This model's (mean, std), (T,) each.

    Raises:
        ValueError: when the trunks differ in width, depth or distance expansion.
    """
    source = model_from_config(source_config)
    differ = [h for h in TRUNK_HPARAMS if source.hparams[h] != model.hparams[h]]
    if differ:
        raise ValueError(
            "the source model's trunk differs in "
            + ", ".join(f"{h} ({source.hparams[h]} vs {model.hparams[h]})" for h in differ)
        )
    donors = {task.name: k for k, task in enumerate(source.tasks)}
    prefixes: dict[str, str] = {}
    for k in sorted(range(len(model.tasks)), key=lambda k: model.tasks[k].name not in donors):
        donor = donors.get(model.tasks[k].name, 0)
        for mine, theirs in zip(trunk_path(model, k), trunk_path(source, donor), strict=True):
            for a, b in zip(mine, theirs, strict=True):
                prefixes.setdefault(a, b)
    state = model.state_dict()
    done = Transfer()
    for key in state:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            state[key] = source_state[prefixes[prefix] + key[len(prefix) :]].clone()
            done.trunk_tensors += 1
    for k, task in enumerate(model.tasks):
        head = _source_head(task, k, state, source, source_state, donors)
        if head is None:
            done.new_heads.append(task.name)
            continue
        if task.kind == "regression":
            _renormalise(head, model.heads[k], source_norm, donors[task.name], norm, k)
        state.update(head)
        done.kept_heads.append(task.name)
    model.load_state_dict(state)
    return done


def _source_head(task, k, state, source, source_state, donors) -> dict[str, torch.Tensor] | None:
    """The source's head of ``task`` under this model's keys, or None (no such task, another kind or shape)."""
    d = donors.get(task.name)
    if d is None or source.tasks[d].kind != task.kind:
        return None
    mine = {key: value for key, value in state.items() if key.startswith(f"heads.{k}.")}
    theirs = {
        f"heads.{k}." + key.removeprefix(f"heads.{d}."): v
        for key, v in source_state.items()
        if key.startswith(f"heads.{d}.")
    }
    if set(theirs) != set(mine) or any(theirs[key].shape != mine[key].shape for key in mine):
        return None
    return {key: value.clone() for key, value in theirs.items()}


def _renormalise(head: dict[str, torch.Tensor], module: nn.Module, source_norm, d: int, norm, k: int) -> None:
    """Rescales the last Linear so ``out * std + mean`` under the new normaliser equals the source's prediction."""
    last = f"heads.{k}.mlp.{len(module.mlp) - 1}."
    scale = float(source_norm[1][d]) / float(norm[1][k])
    shift = (float(source_norm[0][d]) - float(norm[0][k])) / float(norm[1][k])
    head[last + "weight"] = head[last + "weight"] * scale
    head[last + "bias"] = head[last + "bias"] * scale + shift


def freeze(model: MultiTaskCGCNN, n_convs: int) -> list[str]:
    """Stops training the embedding and the first ``n_convs`` convolutions of every task's path.

    Returns:
        The names of the parameters now frozen (``requires_grad`` False).
    """
    prefixes = {p for k in range(len(model.tasks)) for slot in trunk_path(model, k)[: n_convs + 1] for p in slot}
    frozen = [name for name, p in model.named_parameters() if any(name.startswith(x) for x in prefixes)]
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen


def hold_frozen_batchnorm(model: nn.Module) -> None:
    """Puts every BatchNorm whose parameters are all frozen in eval mode: it keeps the source's running statistics
    (call after ``model.train()``)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def trunk_parameter_names(model: MultiTaskCGCNN) -> set[str]:
    """Names of the trunk's parameters (embeddings and convolutions, shared or not)."""
    return {name for name, _ in model.named_parameters() if name.startswith(("trunks.", "branches."))}
