"""Experiment specs: the YAML model and its expansion into cells and trials (pure: no Ray, no MLflow).

A **cell** is one (setting, training fraction, compute basis, axes values); its **trials** are the same training
over each seed. Under ``equal_compute`` a setting of k tasks trains k x ``epochs``; a single-task setting trains
``epochs`` under both bases, so its trials are run once and belong to a cell of each basis.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from mtc.config import (
    ConfigError,
    StrictModel,
    TrainConfig,
    deep_merge,
    describe_validation_error,
    parse_overrides,
    read_yaml,
    with_base,
)
from mtc.tune.search import apply_update, nested

Basis = Literal["equal_steps", "equal_compute"]
BASES: tuple[Basis, ...] = ("equal_steps", "equal_compute")
ALL = "all"
TASK_SEP = "+"
# Set by the experiment itself; split.seed stays fixed so every cell sees the same split.
MANAGED_KEYS = ("tasks", "epochs", "seed", "split.seed", "split.train_fraction", "run_name", "experiment", "scaling")


class Settings(StrictModel):
    """Which task sets to train: each task ``alone`` (true or a list of tasks), ``pairs`` (true or a list of
    pairs), ``all`` tasks in one model; any other key names a setting: dotted TrainConfig overrides applied to
    the all-tasks model, or to the tasks listed under its own ``tasks`` key (``false`` leaves it out, so
    ``--set settings.NAME=false`` runs a spec without one of its settings)."""

    model_config = ConfigDict(extra="allow")

    alone: bool | list[str] = True
    pairs: bool | list[list[str]] = False
    all: bool = True

    @model_validator(mode="after")
    def _named_are_mappings(self) -> Settings:
        for name, value in (self.model_extra or {}).items():
            if value is not False and not isinstance(value, dict):
                raise ValueError(
                    f"{name}: a named setting takes a mapping of dotted config keys (alone, pairs and all are the "
                    "generated ones)"
                )
        return self

    def named(self) -> dict[str, dict[str, Any]]:
        return {name: value for name, value in (self.model_extra or {}).items() if value is not False}


class ExperimentSpec(StrictModel):
    """An experiment: the TrainConfig every trial starts from (``base`` file, then ``train`` over it), the task
    settings, training fractions (of the training rows the base config keeps), compute bases, seeds and axes."""

    base: str | None = Field(None, description="TrainConfig YAML, relative to the spec file")
    train: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] | None = Field(None, description="task names from train.tasks (default: all of them)")
    settings: Settings = Field(default_factory=Settings)
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    bases: list[Basis] = Field(default_factory=lambda: list(BASES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="dotted TrainConfig key -> values")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("every fraction must lie in (0, 1]")
        return _unique(values, "fractions")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if len(values) < 2:
            raise ValueError(
                f"{len(values)} given, at least 2 needed: every cell is a mean ± std over seeds, and the report "
                "weighs each difference against that spread (one training on its own: mtc train)"
            )
        return _unique(values, "seeds")

    @field_validator("bases")
    @classmethod
    def _no_repeats(cls, values: list, info) -> list:
        return _unique(values, info.field_name)

    def base_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (``base`` must already be resolved into ``train``)."""
        return TrainConfig.model_validate(self.train)

    def task_names(self) -> list[str]:
        return self.tasks or [t.name for t in self.base_config().tasks]

    def all_settings(self) -> list[Setting]:
        """Alone, pairs, all, then the named settings; a pair that is all the tasks is listed once, as ``all``.
        ``alone: true`` and ``pairs: true`` leave out what would serve nothing: an auxiliary task alone, a pair of
        auxiliary tasks."""
        names, chosen = self.task_names(), self.settings
        auxiliary = {t.name for t in self.base_config().tasks if t.auxiliary}
        alone = [n for n in names if n not in auxiliary] if chosen.alone is True else chosen.alone or []
        if chosen.pairs is True:
            pairs = [p for p in itertools.combinations(names, 2) if not set(p) <= auxiliary]
        else:
            pairs = chosen.pairs or []
        found = [Setting(task, (task,)) for task in alone]
        found += [Setting(TASK_SEP.join(p), tuple(p)) for p in pairs if len(p) < len(names)]
        if chosen.all:
            found.append(Setting(ALL, tuple(names)))
        for name, overrides in chosen.named().items():
            tasks = tuple(overrides.get("tasks") or names)
            found.append(Setting(name, tasks, tuple((k, v) for k, v in overrides.items() if k != "tasks")))
        return found

    def cells(self) -> list[Cell]:
        """Every (setting, fraction, basis, axes values), in that nesting order."""
        axes = [tuple(zip(self.axes, values, strict=True)) for values in itertools.product(*self.axes.values())]
        epochs = self.base_config().epochs
        return [
            Cell(
                setting.name, fraction, basis, values, epochs * (len(setting.tasks) if basis == "equal_compute" else 1)
            )
            for setting in self.all_settings()
            for fraction in self.fractions
            for basis in self.bases
            for values in axes
        ]

    def points(self) -> list[dict[str, Any]]:
        """The Tune points to run: each cell's trials over the seeds, those two bases share counted once.

        Seed-major, and within a seed the shortest trainings first: an experiment stopped by its budget has whole
        comparisons (every cell at the first seeds, equal steps before equal compute), not all seeds of a few cells.
        """
        unique: dict[tuple, dict[str, Any]] = {}
        for seed in self.seeds:
            for cell in sorted(self.cells(), key=lambda c: c.epochs):
                point = cell.point(seed)
                unique.setdefault(point_key(point), point)
        return list(unique.values())

    def trial_config(self, point: Mapping[str, Any], run_name: str | None = None) -> TrainConfig:
        """The TrainConfig of one point: the setting's tasks and overrides, axes, epochs, seed, train fraction."""
        base = self.base_config()
        setting = {s.name: s for s in self.all_settings()}[point["setting"]]
        # Replaced, not merged: the base's grouping and weights may name tasks this setting lacks (a setting may
        # set its own).
        base = base.model_copy(
            update={
                "tasks": [t for t in base.tasks if t.name in setting.tasks],
                "model": base.model.model_copy(update={"groups": None}),
                "loss": base.loss.model_copy(update={"weights": _subset(base.loss.weights, setting.tasks)}),
            }
        )
        update: dict[str, Any] = {
            "epochs": int(point["epochs"]),
            "seed": int(point["seed"]),
            "split": {"train_fraction": base.split.train_fraction * float(point["fraction"])},
            "run_name": run_name,
        }
        update = _merged(update, setting.overrides)
        update = _merged(update, tuple(point.get("axes", {}).items()))
        return apply_update(base, update, f"setting {setting.name} with {_describe_point(point)}")


@dataclass(frozen=True)
class Setting:
    """A named task set and its dotted overrides (as pairs, so a setting can be hashed)."""

    name: str
    tasks: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def is_single_task(self) -> bool:
        return len(self.tasks) == 1 and not self.overrides


@dataclass(frozen=True)
class Cell:
    setting: str
    fraction: float
    basis: Basis
    axes: tuple[tuple[str, Any], ...]
    epochs: int

    def point(self, seed: int) -> dict[str, Any]:
        """The Tune point of this cell's trial with ``seed`` (plain values: Tune stores it as the trial config)."""
        return {
            "setting": self.setting,
            "fraction": self.fraction,
            "epochs": self.epochs,
            "seed": seed,
            "axes": dict(self.axes),
        }


def point_key(point: Mapping[str, Any]) -> tuple:
    """What identifies a trial: the point without its basis (shared single-task trials have one key)."""
    axes = tuple(sorted((k, repr(v)) for k, v in point.get("axes", {}).items()))
    return point["setting"], float(point["fraction"]), int(point["epochs"]), int(point["seed"]), axes


def load_spec(path: Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read an experiment spec; ``base`` is resolved into ``train`` so the result stands alone (and is logged).

    ``overrides`` are ``--set`` pairs over the resolved spec: ``seeds=[1, 2]``, ``train.epochs=5``.

    Raises:
        ConfigError: naming the key and value that cannot be used.
    """
    data = deep_merge(with_base(path, read_yaml(path)), parse_overrides(overrides))
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return parse_spec(data, source=source)


def widen(spec: ExperimentSpec, overrides: Sequence[str], source: str) -> ExperimentSpec:
    """``spec`` with ``--set`` overrides that only add trials: more seeds, settings, fractions, bases or axes values.
    Every trial of ``spec`` stays and trains exactly as before, so the results it already has stay valid.

    Raises:
        ConfigError: an override that drops a trial of ``spec`` or changes how one trains, naming the trial (and the
            config keys that change).
    """
    what = f"--set {' '.join(overrides)}"
    wider = parse_spec(deep_merge(spec.model_dump(mode="json"), parse_overrides(overrides)), f"{source} with {what}")
    kept = {point_key(p): p for p in wider.points()}
    for point in spec.points():
        trial = f"{point['setting']}, {_describe_point(point)}"
        if point_key(point) not in kept:
            raise ConfigError(
                f"{what} drops the trial {trial} from {source}: --resume with --set only adds trials (seeds, "
                "settings, fractions, bases, axes values); start a new experiment to run fewer"
            )
        before = spec.trial_config(point).model_dump(mode="json")
        after = wider.trial_config(kept[point_key(point)]).model_dump(mode="json")
        if changed := _changed_keys(before, after):
            raise ConfigError(
                f"{what} changes how {source}'s trial {trial} trains ({', '.join(changed)}): its result would no "
                "longer match its config; start a new experiment to train differently"
            )
    return wider


def _changed_keys(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings."""
    changed = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def parse_spec(data: Mapping[str, Any], source: str = "the spec") -> ExperimentSpec:
    """Validate a spec mapping, including what only makes sense against its tasks and config keys."""
    try:
        spec = ExperimentSpec.model_validate(data)
        spec.base_config()
    except ValidationError as err:
        raise ConfigError(f"invalid experiment spec in {source}: {describe_validation_error(err)}") from None
    _check(spec, source)
    return spec


def _check(spec: ExperimentSpec, source: str) -> None:
    known = [t.name for t in spec.base_config().tasks]
    _known_tasks(spec.tasks or [], known, f"{source}: tasks")
    names = spec.task_names()
    chosen = spec.settings
    if isinstance(chosen.alone, list):
        _known_tasks(chosen.alone, names, f"{source}: settings.alone")
    if isinstance(chosen.pairs, list):
        for pair in chosen.pairs:
            if len(set(pair)) != 2:
                raise ConfigError(f"{source}: settings.pairs: {pair} is not a pair of two different tasks")
            _known_tasks(pair, names, f"{source}: settings.pairs")
    for name, overrides in chosen.named().items():
        if name in (*names, ALL) or TASK_SEP in name:
            raise ConfigError(f"{source}: settings.{name}: the name is taken by a generated setting; pick another")
        _known_tasks(overrides.get("tasks") or [], names, f"{source}: settings.{name}.tasks")
        for key in overrides:
            if key != "tasks":
                _unmanaged(key, f"{source}: settings.{name}.{key}")
    for key, values in spec.axes.items():
        _unmanaged(key, f"{source}: axes.{key}")
        if not values or any(isinstance(v, dict | list) for v in values):
            raise ConfigError(f"{source}: axes.{key}: give a non-empty list of plain values")
    settings = spec.all_settings()
    if not settings:
        raise ConfigError(f"{source}: settings: no setting to run (alone, pairs, all and named ones are all off)")
    for cell in spec.cells():  # every config the grid will train is valid before any trial starts
        try:
            spec.trial_config(cell.point(spec.seeds[0]))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def _known_tasks(tasks: list[str], known: list[str], where: str) -> None:
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"{where}: no task {', '.join(map(repr, unknown))} (train.tasks has: {', '.join(known)})")


def _unmanaged(key: str, where: str) -> None:
    if any(key == m or key.startswith(f"{m}.") or m.startswith(f"{key}.") for m in MANAGED_KEYS):
        raise ConfigError(f"{where}: this key is set by the experiment itself (its settings, seeds and fractions)")


def _merged(update: dict[str, Any], pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    for key, value in pairs:
        update = deep_merge(update, nested(key, value))
    return update


def _subset(weights: Mapping[str, float] | None, tasks: tuple[str, ...]) -> dict[str, float] | None:
    return {t: w for t, w in weights.items() if t in tasks} or None if weights else None


def _unique(values: list, field: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{field} repeat a value: {values}")
    return values


def _describe_point(point: Mapping[str, Any]) -> str:
    axes = "".join(f", {k}={v!r}" for k, v in point.get("axes", {}).items())
    return f"fraction {point['fraction']:g}, {point['epochs']} epochs, seed {point['seed']}{axes}"
