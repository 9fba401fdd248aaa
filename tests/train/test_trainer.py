"""Checks the driver makes before any worker starts: resources (one plan for every consumer) and the splits."""

from __future__ import annotations

import pytest

from mtc.config import ScalingConfig, TrainConfig, load_config
from mtc.data.shards import shard_paths
from mtc.errors import MtcError
from mtc.train.datasets import prepare_splits, split_dataset, split_datasets
from mtc.train.resources import ResourceError, WorkerPlan, check_compiler, check_resources


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
        check_resources(WorkerPlan.of(scaling), cluster)
    assert message in str(err.value)


def test_possible_requests_pass_and_count_how_many_fit():
    assert check_resources(WorkerPlan.of(ScalingConfig(workers=2)), {"CPU": 2.0}) == 1
    assert check_resources(WorkerPlan.of(ScalingConfig(gpus=8, cpus_per_worker=4)), {"CPU": 64.0, "GPU": 8.0}) == 1
    assert check_resources(WorkerPlan.of(ScalingConfig(gpus=2, cpus_per_worker=1)), {"CPU": 64.0, "GPU": 8.0}) == 4


def test_gpus_decide_the_worker_count_everywhere():
    """``gpus`` wins over ``workers``: 2 GPU workers, not 4, for the check, the threads and the batch split."""
    plan = WorkerPlan.of(ScalingConfig(workers=4, gpus=2, cpus_per_worker=1))
    assert (plan.workers, plan.gpus, plan.use_gpu, plan.cpus) == (2, 2, True, 3.0)
    assert plan.resources_per_worker() == {"CPU": 1, "GPU": 1}
    cpu_plan = WorkerPlan.of(ScalingConfig(workers=2))
    assert (cpu_plan.workers, cpu_plan.use_gpu, cpu_plan.torch_threads(5.0)) == (2, False, 2)


def test_compile_without_a_cpp_compiler_fails_fast():
    """``compile: true`` on CPU workers needs a C++ compiler: missing, it is named before any work."""
    from torch._inductor import config as inductor_config

    cpu, gpu = WorkerPlan.of(ScalingConfig(workers=2)), WorkerPlan.of(ScalingConfig(gpus=1))
    check_compiler(True, cpu)  # this machine has one
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        with pytest.raises(ResourceError, match=r"none was found on this node .* --set compile=false"):
            check_compiler(True, cpu)
        check_compiler(False, cpu)
        check_compiler(True, gpu)  # GPU workers compile with Triton


def test_normaliser_from_training_rows_only(demo_shards):
    config = load_config(TrainConfig, "configs/mt3.yaml")
    prepared = prepare_splits(demo_shards, config)
    assert sum(prepared.counts.values()) == 2000 and prepared.counts["train"] > 1100
    # efermi has missing values in mp36k; the normaliser must stay finite
    assert all(abs(m) < 100 for m in prepared.mean) and all(s > 0 for s in prepared.std)


def test_unknown_label_and_tiny_data_are_named(demo_shards):
    config = load_config(TrainConfig, None, ["tasks=[{name: bulk_modulus}]"])
    with pytest.raises(MtcError, match="no label column bulk_modulus"):
        prepare_splits(demo_shards, config)
    config = load_config(TrainConfig, "configs/mt3.yaml", ["batch_size=5000"])
    with pytest.raises(MtcError, match="fewer than one batch"):
        prepare_splits(demo_shards, config)
    # 2 GPU workers (not 4) share the training rows: the batch check divides by the real worker count
    config = load_config(TrainConfig, "configs/mt3.yaml", ["batch_size=400", "scaling.workers=4", "scaling.gpus=2"])
    assert prepare_splits(demo_shards, config).counts["train"] // 2 >= 400


@pytest.mark.ray
def test_splits_held_in_memory_are_the_rows_ray_data_streams(demo_shards, ray_session):
    """The splits the driver reads into the object store (they fit) are row for row the streamed ones."""
    import pyarrow as pa

    def rows(dataset) -> pa.Table:
        return pa.concat_tables(ray_session.get(dataset.to_arrow_refs())).sort_by("id")

    config = load_config(TrainConfig, "configs/tiny.yaml", ["split.train_fraction=0.5", "split.bootstrap=1"])
    held, in_worker_memory = split_datasets(demo_shards, config)
    assert in_worker_memory  # the demo's splits fit a worker too
    for split, dataset in held.items():
        assert dataset.num_blocks() == len(shard_paths(demo_shards))  # a block per shard: read here, not by Ray Data
        assert rows(dataset).equals(rows(split_dataset(demo_shards, config, split))), split
