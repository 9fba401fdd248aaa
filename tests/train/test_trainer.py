"""Checks the driver makes before any worker starts."""

from __future__ import annotations

import pytest

from mtc.config import ScalingConfig, TrainConfig, load_config
from mtc.errors import MtcError
from mtc.train.trainer import ResourceError, check_resources, prepare_splits


@pytest.mark.parametrize(
    ("scaling", "cluster", "message"),
    [
        (ScalingConfig(gpus=2), {"CPU": 2.0}, "--gpus 2 asks for 2 GPU workers, but the Ray cluster has no GPU"),
        (ScalingConfig(gpus=8), {"CPU": 64.0, "GPU": 4.0}, "has 4 GPU(s) (64 CPUs); use --gpus 4 or fewer"),
        (ScalingConfig(workers=4, cpus_per_worker=1), {"CPU": 2.0}, "need 5 CPUs; the Ray cluster has 2"),
    ],
)
def test_impossible_requests_fail_fast(scaling, cluster, message):
    with pytest.raises(ResourceError) as err:
        check_resources(scaling, cluster)
    assert message in str(err.value)


def test_possible_requests_pass():
    check_resources(ScalingConfig(workers=2), {"CPU": 2.0})
    check_resources(ScalingConfig(gpus=8, cpus_per_worker=4), {"CPU": 64.0, "GPU": 8.0})


def test_normaliser_from_training_rows_only(demo_shards):
    config = load_config(TrainConfig, "configs/mt3.yaml")
    prepared = prepare_splits(demo_shards, config)
    counts = prepared["counts"]
    assert sum(counts.values()) == 2000 and counts["train"] > 1100
    # efermi has missing values in mp36k; the normaliser must stay finite
    assert all(abs(m) < 100 for m in prepared["mean"]) and all(s > 0 for s in prepared["std"])


def test_unknown_label_and_tiny_data_are_named(demo_shards):
    config = load_config(TrainConfig, None, ["tasks=[{name: bulk_modulus}]"])
    with pytest.raises(MtcError, match="no label column bulk_modulus"):
        prepare_splits(demo_shards, config)
    config = load_config(TrainConfig, "configs/mt3.yaml", ["batch_size=5000"])
    with pytest.raises(MtcError, match="fewer than one batch"):
        prepare_splits(demo_shards, config)
