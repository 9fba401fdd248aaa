"""Task specs: which label column each head learns, how, and how targets are normalised."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, model_validator

from mtc.terms import parse_term

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def check_partition(groups: Sequence[Sequence[str]], names: Sequence[str]) -> None:
    """Raises ValueError unless ``groups`` split ``names`` into non-empty groups, each name exactly once."""
    flat = [name for group in groups for name in group]
    if any(not group for group in groups) or sorted(flat) != sorted(names):
        raise ValueError(
            f"groups {[list(g) for g in groups]} must partition the tasks {list(names)} into non-empty groups"
        )


class TaskSpec(BaseModel):
    """One prediction task (one head).

    Attributes:
        name: Task name; keys heads, metrics and prediction columns.
        column: Source label column in the shards; defaults to ``name`` (or to the column named in
            ``derive``).
        kind: ``"regression"`` or ``"binary"``.
        unit: Physical unit, for display only.
        derive: Optional ``"<column> <op> <number>"`` that turns a label column into a binary target,
            e.g. ``"band_gap == 0"`` for is_metal. Only for binary tasks.
        loss: ``"mse"`` or ``"l1"`` on normalised targets (regression only; binary uses BCE).
        per_atom: Regression only: the target is the label divided by the crystal's atom count (e.g. volume per
            atom from ``volume``); the label column is then read together with ``atomic_numbers``.
        transform: Regression only: ``"log10"`` learns log10 of the label (after ``per_atom``); a label that is not
            positive becomes a missing label (counted by ``invalid_label_counts``), never an error.
        auxiliary: Trained (and its metrics logged) but not served: predictions, the served schema and model
            selection's unit-free score leave it out.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    column: str
    kind: Literal["regression", "binary"] = "regression"
    unit: str = ""
    derive: str | None = None
    loss: Literal["mse", "l1"] = "mse"
    per_atom: bool = False
    auxiliary: bool = False
    transform: Literal["log10"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_column(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("column") is None:
            data = dict(data)
            data["column"] = parse_term(data["derive"]).column if data.get("derive") else data.get("name")
        return data

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if not self.name:
            raise ValueError("task name must not be empty")
        if self.derive is not None:
            if self.kind != "binary":
                raise ValueError(f"task {self.name!r}: derive is only allowed for binary tasks")
            derive_column = parse_term(self.derive).column
            if derive_column != self.column:
                raise ValueError(f"task {self.name!r}: derive reads {derive_column!r} but column is {self.column!r}")
        for option in ("per_atom", "transform"):
            if getattr(self, option) and self.kind != "regression":
                raise ValueError(f"task {self.name!r}: {option} is only allowed for regression tasks")
        return self

    def transformed(self, source: np.ndarray) -> np.ndarray:
        """``source`` (B,) float64 under ``transform``; NaN where the transform is undefined (log10 of x <= 0)."""
        if self.transform is None:
            return source
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(source > 0, np.log10(np.where(source > 0, source, 1.0)), np.nan)

    def target(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Computes this task's target from its source column.

        Args:
            source: float64 (B,) source labels, NaN where missing.

        Returns:
            values float32 (B,) with 0 where missing, mask bool (B,) true where the label exists.

        Raises:
            ValueError: for a non-derived binary task whose labels are not 0/1.
        """
        source = self.transformed(source)
        mask = np.isfinite(source)
        if self.derive is not None:
            _, op, threshold = parse_term(self.derive)
            values = _OPS[op](np.where(mask, source, 0.0), threshold).astype(np.float32)
            values[~mask] = 0.0
        else:
            values = np.where(mask, source, 0.0).astype(np.float32)
            if self.kind == "binary" and not np.isin(values[mask], (0.0, 1.0)).all():
                raise ValueError(f"binary task {self.name!r}: column {self.column!r} has values other than 0/1")
        return values, mask


def as_tasks(items: Iterable[TaskSpec | Mapping[str, Any]]) -> tuple[TaskSpec, ...]:
    """Validates a task list (specs or plain dicts) and checks that names are unique.

    Args:
        items: TaskSpec objects or dicts of their fields.

    Returns:
        The tasks, in order.

    Raises:
        ValueError: if the list is empty or names repeat.
    """
    tasks = tuple(t if isinstance(t, TaskSpec) else TaskSpec.model_validate(t) for t in items)
    if not tasks:
        raise ValueError("at least one task is required")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tasks


def _column_as_float(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        raise KeyError(f"label column {column!r} not in table (columns: {table.column_names})")
    col = pc.cast(table.column(column), pa.float64())
    return np.asarray(pc.fill_null(col, float("nan")).to_numpy(), dtype=np.float64)


def task_targets(table: pa.Table, tasks: Sequence[TaskSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Computes every task's target from the label columns of a table.

    Nulls and non-finite labels are missing; a derived task is missing where its source is.

    Args:
        table: Arrow table with B rows holding each task's source column (and ``atomic_numbers`` when a task is
            ``per_atom``).
        tasks: T task specs.

    Returns:
        values float32 (B, T) (0 where missing), mask bool (B, T).
    """
    values = np.zeros((table.num_rows, len(tasks)), dtype=np.float32)
    mask = np.zeros((table.num_rows, len(tasks)), dtype=bool)
    for k, (task, source) in enumerate(zip(tasks, _sources(table, tasks), strict=True)):
        values[:, k], mask[:, k] = task.target(source)
    return values, mask


def invalid_label_counts(table: pa.Table, tasks: Sequence[TaskSpec]) -> dict[str, int]:
    """Per task with a ``transform``: rows whose label exists but is outside the transform's domain (log10 of
    x <= 0); those rows train as missing labels."""
    return {
        task.name: int((np.isfinite(source) & ~np.isfinite(task.transformed(source))).sum())
        for task, source in zip(tasks, _sources(table, tasks), strict=True)
        if task.transform is not None
    }


def _sources(table: pa.Table, tasks: Sequence[TaskSpec]) -> list[np.ndarray]:
    """Each task's float64 (B,) source labels (per atom where asked), NaN where missing; columns read once."""
    columns: dict[str, np.ndarray] = {}
    sources = []
    for task in tasks:
        if task.column not in columns:
            columns[task.column] = _column_as_float(table, task.column)
        source = columns[task.column]
        sources.append(source / _atom_counts(table) if task.per_atom else source)
    return sources


def _atom_counts(table: pa.Table) -> np.ndarray:
    """float64 (B,) atoms per crystal, from the ``atomic_numbers`` list column."""
    if "atomic_numbers" not in table.column_names:
        raise KeyError("a per_atom task needs the atomic_numbers column next to its label column")
    return pc.list_value_length(table.column("atomic_numbers")).to_numpy(zero_copy_only=False).astype(np.float64)


def served(tasks: Iterable[TaskSpec]) -> list[TaskSpec]:
    """The tasks a model predicts for its users: every task but the auxiliary ones."""
    return [t for t in tasks if not t.auxiliary]


def fit_normalizer(values: np.ndarray, mask: np.ndarray, tasks: Sequence[TaskSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Fits per-task z-score statistics on observed labels only.

    Binary tasks, tasks without labels and constant tasks get std 1 (binary and unlabelled: mean 0).

    Args:
        values: float (B, T) targets.
        mask: bool (B, T), true where a label exists.
        tasks: T task specs.

    Returns:
        mean float32 (T,), std float32 (T,).
    """
    mean = np.zeros(len(tasks), dtype=np.float64)
    std = np.ones(len(tasks), dtype=np.float64)
    for k, task in enumerate(tasks):
        observed = np.asarray(values[:, k], dtype=np.float64)[mask[:, k]]
        if task.kind == "binary" or observed.size == 0:
            continue
        mean[k] = observed.mean()
        sd = observed.std()
        std[k] = sd if sd > 0 else 1.0
    return mean.astype(np.float32), std.astype(np.float32)
