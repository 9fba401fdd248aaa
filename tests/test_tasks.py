"""Task specs, target computation and normalisation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from mtc.tasks import (
    TaskSpec,
    as_tasks,
    check_partition,
    fit_normalizer,
    invalid_label_counts,
    served,
    task_targets,
)

NAN = float("nan")


def test_check_partition() -> None:
    check_partition([["a", "b"], ["c"]], ["a", "b", "c"])
    for bad in ([["a", "b"]], [["a", "b"], ["c"], []], [["a", "a"], ["b", "c"]], [["a", "b", "c", "d"]]):
        with pytest.raises(ValueError, match="partition"):
            check_partition(bad, ["a", "b", "c"])


def test_taskspec_defaults_and_validation() -> None:
    assert TaskSpec(name="band_gap").column == "band_gap"
    assert TaskSpec(name="gap", column="band_gap").column == "band_gap"
    metal = TaskSpec(name="is_metal", kind="binary", derive="band_gap == 0")
    assert metal.column == "band_gap"
    assert TaskSpec.model_validate(metal.model_dump()) == metal
    with pytest.raises(ValidationError):
        TaskSpec(name="g", kind="regression", derive="band_gap == 0")
    with pytest.raises(ValidationError):
        TaskSpec(name="m", kind="binary", column="efermi", derive="band_gap == 0")
    with pytest.raises(ValidationError):
        TaskSpec(name="m", kind="binary", derive="band_gap = 0")
    with pytest.raises(ValidationError):
        TaskSpec(name="x", kind="ordinal")
    with pytest.raises(ValueError, match="unique"):
        as_tasks([{"name": "a"}, {"name": "a", "column": "b"}])
    with pytest.raises(ValueError):
        as_tasks([])


def test_task_targets_missing_and_derived() -> None:
    gap = pa.chunked_array([pa.array([0.0, 1.5, None]), pa.array([NAN, 0.0, 3.0])])
    table = pa.table({"band_gap": gap, "flag": pa.array([True, False, None, True, False, True])})
    tasks = as_tasks(
        [
            {"name": "band_gap"},
            {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
            {"name": "wide", "kind": "binary", "derive": "band_gap > 2"},
            {"name": "flag", "kind": "binary"},
        ]
    )
    values, mask = task_targets(table, tasks)
    assert values.dtype == np.float32 and values.shape == (6, 4) and mask.dtype == bool
    expected_mask = [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    np.testing.assert_array_equal(mask, np.array(expected_mask, dtype=bool))
    np.testing.assert_array_equal(values[:, 0], [0, 1.5, 0, 0, 0, 3])
    np.testing.assert_array_equal(values[:, 1], [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(values[:, 2], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(values[:, 3], [1, 0, 0, 1, 0, 1])


def test_per_atom_targets_divide_by_the_atom_count() -> None:
    table = pa.table(
        {
            "atomic_numbers": pa.array([[8], [11, 17], [26, 26, 8, 8]], pa.list_(pa.int8())),
            "volume": [20.0, 45.0, None],
            "total_magnetization": [0.0, -2.0, 8.0],
        }
    )
    tasks = as_tasks(
        [
            {"name": "volume"},
            {"name": "volume_per_atom", "column": "volume", "per_atom": True},
            {"name": "magnetization_per_atom", "column": "total_magnetization", "per_atom": True},
        ]
    )
    values, mask = task_targets(table, tasks)
    np.testing.assert_array_equal(values, np.array([[20, 20, 0], [45, 22.5, -1], [0, 0, 2]], np.float32))
    np.testing.assert_array_equal(mask[:, 1], [True, True, False])  # missing stays missing
    with pytest.raises(KeyError, match="atomic_numbers"):
        task_targets(table.drop_columns(["atomic_numbers"]), tasks)
    with pytest.raises(ValidationError, match="per_atom"):
        TaskSpec(name="m", kind="binary", derive="band_gap == 0", per_atom=True)


def test_log10_transform_and_labels_outside_its_domain() -> None:
    """log10 of the label; a label <= 0 is a counted missing label (not a crash), a null stays an uncounted one."""
    table = pa.table(
        {"atomic_numbers": pa.array([[8], [11, 17], [8], [8]], pa.list_(pa.int8())), "k": [100.0, 0.0, None, -3.0]}
    )
    tasks = as_tasks(
        [
            {"name": "k"},
            {"name": "log_k", "column": "k", "transform": "log10"},
            {"name": "log_k_atom", "column": "k", "transform": "log10", "per_atom": True},
        ]
    )
    values, mask = task_targets(table, tasks)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [False] * 3, [True, False, False]])
    np.testing.assert_allclose(values[0], [100.0, 2.0, 2.0])
    assert values[1, 1] == values[3, 1] == 0.0  # missing targets are 0, as every missing label
    assert invalid_label_counts(table, tasks) == {"log_k": 2, "log_k_atom": 2}
    with pytest.raises(ValidationError, match="transform is only allowed for regression"):
        TaskSpec(name="m", kind="binary", derive="band_gap == 0", transform="log10")
    with pytest.raises(ValidationError, match="log10"):
        TaskSpec(name="k", transform="log")


def test_auxiliary_tasks_are_not_served() -> None:
    tasks = as_tasks([{"name": "band_gap"}, {"name": "volume", "auxiliary": True}, {"name": "efermi"}])
    assert [t.name for t in served(tasks)] == ["band_gap", "efermi"]


def test_task_targets_errors() -> None:
    table = pa.table({"x": [0.0, 2.0]})
    with pytest.raises(ValueError, match="0/1"):
        task_targets(table, as_tasks([{"name": "x", "kind": "binary"}]))
    with pytest.raises(KeyError, match="missing"):
        task_targets(table, as_tasks([{"name": "missing"}]))


def test_targets_and_normalizer_on_real_labels(demo_records: list[dict]) -> None:
    rows = [dict(r) for r in demo_records[:200]]
    rows[3]["efermi"] = None
    table = pa.Table.from_pylist(rows)
    tasks = as_tasks(
        [
            {"name": "formation_energy_per_atom", "unit": "eV/atom"},
            {"name": "efermi", "unit": "eV"},
            {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
        ]
    )
    values, mask = task_targets(table, tasks)
    assert mask[:, [0, 2]].all() and mask[:, 1].sum() == 199 and not mask[3, 1]
    np.testing.assert_array_equal(values[:, 2], [float(r["band_gap"] == 0) for r in rows])

    mean, std = fit_normalizer(values, mask, tasks)
    assert mean.dtype == np.float32 and mean.shape == std.shape == (3,)
    efermi = np.array([r["efermi"] for i, r in enumerate(rows) if i != 3])
    np.testing.assert_allclose(mean[1], efermi.mean(), rtol=1e-5)
    np.testing.assert_allclose(std[1], efermi.std(), rtol=1e-5)
    assert (mean[2], std[2]) == (0.0, 1.0)


def test_normalizer_edge_cases() -> None:
    tasks = as_tasks([{"name": "const"}, {"name": "empty"}])
    values = np.array([[2.0, 7.0], [2.0, 9.0]], dtype=np.float32)
    mask = np.array([[True, False], [True, False]])
    mean, std = fit_normalizer(values, mask, tasks)
    np.testing.assert_array_equal(mean, [2.0, 0.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])
