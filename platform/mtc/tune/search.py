"""Search spaces of ``mtc tune``: the YAML model, task groupings, simplex weights, trial configs, the objective.

A sampled point is a flat dict: ``grouping`` (a label such as ``"a+b | c"``), ``strategy``, ``w_<task>``
(uniform draws turned into weights on the simplex), ``lr``, ``auxiliary`` (which of the base config's auxiliary
tasks train beside the served ones, a label such as ``"volume+magnetization"`` or ``"none"``) and any dotted
TrainConfig key listed under ``space.choices``. Dimensions that do not vary are left out of the point and take
their only value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mtc.config import (
    ConfigError,
    StrictModel,
    TrainConfig,
    deep_merge,
    describe_validation_error,
    read_yaml,
    with_base,
)
from mtc.tasks import TaskSpec, check_partition, served
from mtc.train.metrics import task_error

MAX_ENUMERATED_TASKS = 4  # Bell(4) = 15 groupings; Bell(5) = 52 is too many to try by default
TPE_STARTUP = 10  # Optuna's TPE samples this many points at random before it models anything
# set by the tune itself; the rest of ``loss`` (gradient_surgery, temperature) can be a choice
MANAGED_KEYS = (
    "tasks",
    "epochs",
    "run_name",
    "experiment",
    "model.groups",
    "loss.strategy",
    "loss.weights",
    "optim.lr",
    "scaling",
)
GROUP_SEP, TASK_SEP = " | ", "+"
NO_AUXILIARY = "none"

Partition = list[list[str]]


class Range(StrictModel):
    """A continuous interval, sampled log-uniformly unless ``log: false``."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
        return self


class Space(StrictModel):
    """What the trials vary. ``groupings``: ``all`` (every partition of the tasks), ``joint`` or a list."""

    loss_weights: bool = True
    strategy: list[Literal["fixed", "uncertainty", "dwa"]] = Field(default_factory=lambda: ["fixed"], min_length=1)
    groupings: Literal["all", "joint"] | list[Partition] = "all"
    lr: Range | None = None
    auxiliary: list[list[str]] | None = Field(
        None, description="sets of the base config's auxiliary tasks to try ([]: none); unset: train them all"
    )
    choices: dict[str, list[Any]] = Field(default_factory=dict, description="dotted TrainConfig key -> values")


class Asha(StrictModel):
    """ASHA early stopping on the per-epoch objective (rungs at grace_period * reduction_factor^k epochs)."""

    enabled: bool = True
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class TuneSpace(StrictModel):
    """A tune: the TrainConfig the trials start from (``base`` file, then ``train`` merged over it), the space,
    the budget and optional single-task references (validation MAE, or 1 - AUC for binary tasks)."""

    base: str | None = Field(None, description="TrainConfig YAML, relative to the space file")
    train: dict[str, Any] = Field(default_factory=dict)
    trials: int = Field(8, ge=1)
    search: Literal["auto", "optuna", "random"] = "auto"
    space: Space = Field(default_factory=Space)
    asha: Asha = Field(default_factory=Asha)
    references: dict[str, float] = Field(default_factory=dict)
    seed: int = 0

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (``base`` must already be resolved into ``train``)."""
        return TrainConfig.model_validate(self.train)

    def task_names(self) -> list[str]:
        return [t.name for t in self.base_config().tasks]

    def scored_task_names(self) -> list[str]:
        """The tasks the objective averages over (and that need a single-task reference): all but auxiliary ones."""
        return [t.name for t in served(self.base_config().tasks)]

    def partitions(self) -> list[Partition]:
        """The groupings to try, canonical (groups and tasks in task order), without repeats."""
        names = self.task_names()
        if self.space.groupings == "joint":
            return [[names]]
        if self.space.groupings == "all":
            return partitions(names)
        unique: dict[str, Partition] = {}
        for groups in self.space.groupings:
            canonical = canonical_partition(groups, names)
            unique.setdefault(grouping_label(canonical), canonical)
        return list(unique.values())

    def auxiliary_options(self) -> list[str]:
        """The auxiliary-task sets to try, as labels in task order without repeats; [] when the space sets none."""
        order = {name: k for k, name in enumerate(self.task_names())}
        labels = [
            TASK_SEP.join(sorted(chosen, key=order.__getitem__)) or NO_AUXILIARY
            for chosen in self.space.auxiliary or []
        ]
        return list(dict.fromkeys(labels))

    def algorithm(self) -> Literal["optuna", "random"]:
        """``auto``: random when every trial would fall in TPE's random start-up phase anyway, else Optuna."""
        if self.search != "auto":
            return self.search
        return "random" if self.trials <= TPE_STARTUP else "optuna"


def load_space(path: Path) -> TuneSpace:
    """Read a space file; ``base`` is resolved into ``train`` so the result stands alone (and is logged).

    Raises:
        ConfigError: naming the key and value that cannot be used.
    """
    return parse_space(with_base(path, read_yaml(path)), source=str(path))


def parse_space(data: Mapping[str, Any], source: str = "the space") -> TuneSpace:
    """Validate a space mapping, including what only makes sense against its tasks."""
    try:
        space = TuneSpace.model_validate(data)
        space.base_config()
    except ValidationError as err:
        raise ConfigError(f"invalid tune space in {source}: {describe_validation_error(err)}") from None
    _check_against_tasks(space, source)
    return space


def _check_against_tasks(space: TuneSpace, source: str) -> None:
    names = space.task_names()
    if space.space.groupings == "all" and len(names) > MAX_ENUMERATED_TASKS:
        raise ConfigError(
            f"{source}: space.groupings 'all' would try {bell(len(names))} groupings of {len(names)} tasks; "
            f"list the groupings to try (at most {MAX_ENUMERATED_TASKS} tasks are enumerated)"
        )
    if isinstance(space.space.groupings, list):
        for groups in space.space.groupings:
            canonical_partition(groups, names, source)
    for task, value in space.references.items():
        if task not in names:
            raise ConfigError(f"{source}: references.{task}: no such task (tasks: {', '.join(names)})")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source}: references.{task}: {value!r} must be a positive number")
    base = space.base_config()
    auxiliary = [t.name for t in base.tasks if t.auxiliary]
    for chosen in space.space.auxiliary or []:
        for name in chosen:
            if name not in auxiliary:
                raise ConfigError(
                    f"{source}: space.auxiliary: {name!r} is not an auxiliary task of the base config (its "
                    f"auxiliary tasks: {', '.join(auxiliary) or 'none'}; mark one with auxiliary: true)"
                )
    for key, values in space.space.choices.items():
        if any(key == m or key.startswith(f"{m}.") for m in MANAGED_KEYS):
            raise ConfigError(f"{source}: space.choices.{key}: this key is set by the tune itself")
        if not values or any(isinstance(v, dict | list) for v in values):
            raise ConfigError(f"{source}: space.choices.{key}: give a non-empty list of plain values")
        for value in values:
            apply_update(base, nested(key, value), f"space.choices.{key}={value!r}")


def bell(n: int) -> int:
    """The number of partitions of an n-set (Bell number), from the Bell triangle."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]


def partitions(items: Sequence[str]) -> list[Partition]:
    """Every partition of ``items`` into non-empty groups (Bell(n) of them), fewest groups first."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    found = []
    for smaller in partitions(rest):
        found.append([[first], *smaller])
        found.extend([*smaller[:k], [first, *group], *smaller[k + 1 :]] for k, group in enumerate(smaller))
    order = {name: k for k, name in enumerate(items)}
    canonical = [_sorted_groups(p, order) for p in found]
    return sorted(canonical, key=lambda p: (len(p), [[order[n] for n in g] for g in p]))


def canonical_partition(groups: Partition, names: Sequence[str], source: str = "the space") -> Partition:
    """``groups`` sorted by task order; raises ConfigError unless they partition ``names`` into non-empty groups."""
    try:
        check_partition(groups, names)
    except ValueError as err:
        raise ConfigError(f"{source}: space.groupings: {err}") from None
    return _sorted_groups(groups, {name: k for k, name in enumerate(names)})


def _sorted_groups(groups: Partition, order: Mapping[str, int]) -> Partition:
    inner = [sorted(g, key=order.__getitem__) for g in groups]
    return sorted(inner, key=lambda g: order[g[0]])


def grouping_label(groups: Partition) -> str:
    """``[[a, b], [c]]`` -> ``"a+b | c"``."""
    return GROUP_SEP.join(TASK_SEP.join(g) for g in groups)


def simplex(draws: Mapping[str, float]) -> dict[str, float]:
    """Uniform draws u_k in (0, 1) -> weights -log(u_k) / sum_j -log(u_j): uniform on the simplex (Dirichlet(1))."""
    logs = {k: -math.log(min(max(u, 1e-12), 1 - 1e-12)) for k, u in draws.items()}
    total = sum(logs.values())
    return {k: v / total for k, v in logs.items()}


def categorical_dims(space: TuneSpace) -> dict[str, list[Any]]:
    """The dimensions that vary over a list of values (grouping, strategy, auxiliary-task set, choices)."""
    dims: dict[str, list[Any]] = {}
    labels = [grouping_label(p) for p in space.partitions()]
    if len(labels) > 1:
        dims["grouping"] = labels
    if len(space.space.strategy) > 1:
        dims["strategy"] = list(space.space.strategy)
    if len(space.auxiliary_options()) > 1:
        dims["auxiliary"] = space.auxiliary_options()
    dims.update({key: list(values) for key, values in space.space.choices.items() if len(values) > 1})
    return dims


def draws_weights(space: TuneSpace) -> bool:
    """Whether a point draws fixed loss weights on the simplex (one ``w_<task>`` range per task)."""
    return space.space.loss_weights and "fixed" in space.space.strategy and len(space.task_names()) > 1


def has_continuous_dims(space: TuneSpace) -> bool:
    """Whether a point draws a number from a range (loss weights on the simplex, the learning rate)."""
    return bool(draws_weights(space) or space.space.lr)


def grid(space: TuneSpace) -> list[dict[str, Any]] | None:
    """Every distinct point of a space whose dimensions are all lists of values, in a fixed order (the first
    dimension varies slowest); None when a dimension is a range. A space where nothing varies has one point, {}."""
    if has_continuous_dims(space):
        return None
    dims = categorical_dims(space)
    return [dict(zip(dims, values, strict=True)) for values in itertools.product(*dims.values())]


def distinct_trials(space: TuneSpace) -> int:
    """How many trials the space can give that are not repeats: ``trials``, or fewer when its grid is smaller.
    Two trials of one point train the same model (same config, seed and split), so a repeat teaches nothing."""
    points = grid(space)
    return space.trials if points is None else min(space.trials, len(points))


def param_space(space: TuneSpace) -> dict[str, Any]:
    """Ray Tune domains of the dimensions that vary."""
    from ray import tune

    categorical = categorical_dims(space)
    dims: dict[str, Any] = {}
    if "grouping" in categorical:
        dims["grouping"] = tune.choice(categorical.pop("grouping"))
    if "strategy" in categorical:
        dims["strategy"] = tune.choice(categorical.pop("strategy"))
    if draws_weights(space):
        dims.update({f"w_{name}": tune.uniform(0.0, 1.0) for name in space.task_names()})
    if space.space.lr:
        lr = space.space.lr
        dims["lr"] = (tune.loguniform if lr.log else tune.uniform)(lr.low, lr.high)
    dims.update({key: tune.choice(values) for key, values in categorical.items()})
    return dims


def first_points(space: TuneSpace) -> list[dict[str, Any]]:
    """One point per grouping, then one per further auxiliary-task set, tried first (as many as the trials allow),
    so the affinity table covers every grouping and the ranked table every auxiliary-task set.

    The other dimensions sit at their centre: the first strategy, equal weights, the middle of the lr range
    (geometric for a log range), the first grouping and auxiliary-task set, each choice's first value.
    """
    dims = param_space(space)
    if "grouping" not in dims and "auxiliary" not in dims:
        return []
    centre: dict[str, Any] = {key: 0.5 for key in dims if key.startswith("w_")}
    if "strategy" in dims:
        centre["strategy"] = space.space.strategy[0]
    if "lr" in dims:
        lr = space.space.lr
        centre["lr"] = math.sqrt(lr.low * lr.high) if lr.log else (lr.low + lr.high) / 2
    centre.update({key: space.space.choices[key][0] for key in dims if key in space.space.choices})
    labels = [grouping_label(p) for p in space.partitions()] if "grouping" in dims else [None]
    options = space.auxiliary_options() if "auxiliary" in dims else [None]
    points = [(label, options[0]) for label in labels] + [(labels[0], option) for option in options[1:]]
    return [
        {**centre, **({"grouping": label} if label else {}), **({"auxiliary": option} if option else {})}
        for label, option in points[: space.trials]
    ]


def trial_config(space: TuneSpace, point: Mapping[str, Any], run_name: str | None = None) -> TrainConfig:
    """The TrainConfig of one sampled point: tasks (the served ones and the chosen auxiliary ones), groups, loss
    strategy and simplex weights, lr, choices. A grouping loses the auxiliary tasks the point leaves out."""
    base = space.base_config()
    options = space.auxiliary_options()
    auxiliary = point.get("auxiliary", options[0] if options else None)
    chosen = None if auxiliary is None else set() if auxiliary == NO_AUXILIARY else set(auxiliary.split(TASK_SEP))
    kept = [t for t in base.tasks if not t.auxiliary or chosen is None or t.name in chosen]
    names = [t.name for t in kept]
    by_label = {grouping_label(p): p for p in space.partitions()}
    label = point.get("grouping", next(iter(by_label)))
    strategy = point.get("strategy", space.space.strategy[0])
    draws = {n: point[f"w_{n}"] for n in names if f"w_{n}" in point}
    weights = simplex(draws) if strategy == "fixed" and len(draws) == len(names) else None
    groups = [g for g in ([t for t in group if t in names] for group in by_label[label]) if g]
    update: dict[str, Any] = {
        "tasks": [t.model_dump(mode="json") for t in kept],
        "model": {"groups": groups if len(groups) > 1 else None},
        "loss": {"strategy": strategy, "weights": weights},
        "run_name": run_name,
    }
    if "lr" in point:
        update["optim"] = {"lr": float(point["lr"])}
    for key, values in space.space.choices.items():
        update = deep_merge(update, nested(key, point.get(key, values[0])))
    return apply_update(base, update, f"trial point {dict(point)}")


def reference_config(space: TuneSpace, task: str, run_name: str | None = None) -> TrainConfig:
    """The single-task run of ``task`` with the base settings and budget: its MAE is the task's reference."""
    base = space.base_config()
    spec = next(t for t in base.tasks if t.name == task)
    update = {
        "tasks": [spec.model_dump(mode="json")],
        "model": {"groups": None},
        "loss": {"strategy": "fixed", "weights": None},
        "run_name": run_name,
    }
    return apply_update(base, update, f"reference run of {task}")


def point_config(space: TuneSpace, point: Mapping[str, Any], run_name: str | None = None) -> TrainConfig:
    """The TrainConfig of a tune's Tune point: a reference run (``{"reference": task}``) or a sampled trial."""
    if "reference" in point:
        return reference_config(space, point["reference"], run_name)
    return trial_config(space, point, run_name)


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``("model.n_conv", 3)`` -> ``{"model": {"n_conv": 3}}``."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def apply_update(base: TrainConfig, update: Mapping[str, Any], what: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(deep_merge(base.model_dump(mode="json"), dict(update)))
    except ValidationError as err:
        raise ConfigError(f"{what} gives an invalid training config: {describe_validation_error(err)}") from None


def task_errors(per_task: Mapping[str, Mapping[str, float]], tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """Each served task's error on a split (``mtc.train.metrics.task_error``) from that split's per-task metrics;
    auxiliary tasks are left out, as from model selection."""
    return {task.name: task_error(task, per_task.get(task.name, {})) for task in served(tasks)}


def relative_errors(errors: Mapping[str, float], references: Mapping[str, float]) -> dict[str, float]:
    """Each task's error divided by its single-task reference error (< 1: better than alone)."""
    missing = sorted(set(errors) - set(references))
    if missing:
        raise ConfigError(f"no single-task reference error for task(s) {', '.join(missing)}")
    return {task: error / references[task] for task, error in errors.items()}


def objective(errors: Mapping[str, float], references: Mapping[str, float]) -> float:
    """Mean over tasks of error / reference error: unit-free, comparable across groupings; NaN if any is."""
    ratios = list(relative_errors(errors, references).values())
    return float(sum(ratios) / len(ratios)) if ratios else math.nan
