"""The training driver: checks before work, splits and normaliser, the MLflow run, Ray Train's TorchTrainer."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mtc import tracking
from mtc.config import ScalingConfig, TrainConfig, dump_yaml
from mtc.data.shards import read_manifest, read_shards, shard_paths
from mtc.data.splits import SPLIT_NAMES, TRAIN, split_codes
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.registry.models import DEFAULT_NAME, log_model
from mtc.tasks import fit_normalizer, task_targets

GRAPH_COLUMNS = ["id", "atomic_numbers", "edge_src", "edge_dst", "edge_dist"]
DATA_CPUS = 1.0  # CPUs left for Ray Data while training; a starved pipeline hangs silently
ARROW_INFLATION = 8  # in-memory Arrow bytes per compressed shard byte (zstd), measured on mp36k


class ResourceError(MtcError):
    """The Ray cluster cannot hold what was asked."""


class TrainingError(MtcError):
    """Training failed; the message says where to look."""


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    bundle: ModelBundle
    checkpoint_path: str
    registered: dict


def check_resources(scaling: ScalingConfig, cluster: dict[str, float]) -> None:
    """Fail before starting when the cluster lacks the GPUs or CPUs asked for (Ray would wait forever)."""
    gpus, cpus = int(cluster.get("GPU", 0)), cluster.get("CPU", 0)
    if scaling.gpus and gpus < scaling.gpus:
        instead = (
            f"use --gpus {gpus} or fewer, or --workers N for CPU workers"
            if gpus
            else "run on CPU workers with --workers N, or point --address at a GPU cluster"
        )
        raise ResourceError(
            f"--gpus {scaling.gpus} asks for {scaling.gpus} GPU workers, but the Ray cluster has "
            f"{f'{gpus} GPU(s)' if gpus else 'no GPU'} ({cpus:g} CPUs); {instead}"
        )
    workers = scaling.gpus or scaling.workers
    needed = workers * scaling.cpus_per_worker + DATA_CPUS
    if needed > cpus:
        raise ResourceError(
            f"{workers} worker(s) x {scaling.cpus_per_worker:g} CPU + {DATA_CPUS:g} CPU for Ray Data need "
            f"{needed:g} CPUs; the Ray cluster has {cpus:g}. Lower --workers or scaling.cpus_per_worker"
        )


def prepare_splits(shards: Path, config: TrainConfig) -> dict[str, Any]:
    """Split counts and the normaliser fitted on the training rows only (missing labels ignored)."""
    manifest = read_manifest(shards)
    missing = [c for c in config.label_columns() if c not in manifest["label_columns"]]
    if missing:
        raise MtcError(
            f"{shards} has no label column {', '.join(missing)} (it has: {', '.join(manifest['label_columns'])}); "
            "featurize with --label, or change the tasks"
        )
    labels = read_shards(shards, columns=["id", *config.label_columns()])
    s = config.split
    codes = split_codes(labels.column("id").to_pylist(), s.val, s.test, s.seed, s.train_fraction)
    values, mask = task_targets(labels, config.tasks)
    train_rows = codes == TRAIN
    mean, std = fit_normalizer(values[train_rows], mask[train_rows], config.tasks)
    counts = {name: int((codes == code).sum()) for name, code in SPLIT_NAMES.items()}
    per_worker = counts["train"] // max(config.scaling.workers, config.scaling.gpus, 1)
    if per_worker < config.batch_size:
        raise MtcError(
            f"{counts['train']} training crystals give each of the workers {per_worker}, fewer than one batch "
            f"of {config.batch_size}; lower batch_size (--set batch_size=...) or use more data"
        )
    no_labels = [t.name for k, t in enumerate(config.tasks) if not mask[train_rows, k].any()]
    if no_labels:
        raise MtcError(f"no training crystal has a label for task(s) {', '.join(no_labels)}")
    return {"mean": mean.tolist(), "std": std.tolist(), "counts": counts, "manifest": manifest}


def split_dataset(shards: Path, config: TrainConfig, split: str):
    """A Ray dataset of one split's graph rows, streamed from the shards."""
    import ray

    columns = [*GRAPH_COLUMNS, *config.label_columns()]
    s = config.split
    return ray.data.read_parquet([str(p) for p in shard_paths(shards)], columns=columns).map_batches(
        _keep_split,
        fn_kwargs={
            "code": SPLIT_NAMES[split],
            "val": s.val,
            "test": s.test,
            "seed": s.seed,
            "train_fraction": s.train_fraction,
        },
        batch_format="pyarrow",
    )


def _datasets(shards: Path, config: TrainConfig) -> dict:
    """The three splits; held in Ray's object store when they fit (every epoch then skips reading and filtering)."""
    import ray

    datasets = {split: split_dataset(shards, config, split) for split in SPLIT_NAMES}
    on_disk = sum(p.stat().st_size for p in shard_paths(shards) if p.exists())
    fits = on_disk * ARROW_INFLATION < 0.3 * ray.available_resources().get("object_store_memory", 0)
    if config.data_cache == "memory" or (config.data_cache == "auto" and fits):
        datasets = {split: ds.materialize() for split, ds in datasets.items()}
    return datasets


def _keep_split(batch: pa.Table, code: int, val: float, test: float, seed: int, train_fraction: float) -> pa.Table:
    codes = split_codes(batch.column("id").to_pylist(), val, test, seed, train_fraction)
    return batch.filter(pa.array(codes == code))


def train(
    shards: Path,
    config: TrainConfig,
    resume_run_id: str | None = None,
    register: str | None = DEFAULT_NAME,
    parent_run_id: str | None = None,
    ray_callbacks: list | None = None,
) -> TrainResult:
    """Train on the graph shards in ``shards`` with Ray Train, tracked in MLflow.

    Everything that can be checked is checked before a worker starts. ``resume_run_id`` continues an
    interrupted run from its last checkpoint (same run, same Ray storage). The trained model is
    logged as an MLflow pyfunc and registered as a new version of ``register`` (None: not registered).
    ``parent_run_id`` nests the run under another (a tune); ``ray_callbacks`` go to Ray Train's RunConfig
    (e.g. Tune's report callback, which forwards every epoch's metrics to the trial).
    """
    import mlflow
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    from mtc.train.loop import train_loop_per_worker

    shards = Path(shards).resolve()
    check_resources(config.scaling, ray.cluster_resources())
    prepared = prepare_splits(shards, config)
    uri = tracking.configure()
    client = mlflow.MlflowClient(uri)
    if resume_run_id:
        run = client.get_run(resume_run_id)
        exp_id = run.info.experiment_id
        client.update_run(resume_run_id, status="RUNNING")
    else:
        exp_id = tracking.experiment_id(config.experiment)
        tags = {"mtc.shards": str(shards), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = client.create_run(exp_id, run_name=config.run_name, tags=tags)
        _log_inputs(client, run.info.run_id, config, prepared)
    run_id = run.info.run_id

    scaling = config.scaling
    n_workers = scaling.gpus or scaling.workers
    cpus = ray.cluster_resources().get("CPU", 1)
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.gpus else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": config.model_dump(mode="json"),
            "mean": prepared["mean"],
            "std": prepared["std"],
            "graph_params": prepared["manifest"]["params"],
            "run_id": run_id,
            "tracking_uri": uri,
            "threads": max(1, int(cpus - DATA_CPUS) // n_workers) if not scaling.gpus else 4,
        },
        scaling_config=RayScaling(
            num_workers=n_workers,
            use_gpu=bool(scaling.gpus),
            resources_per_worker=resources,
            placement_strategy=scaling.placement.upper(),
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.gpus else "gloo", timeout_s=scaling.collective_timeout_s),
        run_config=RunConfig(
            name=f"mtc-{run_id}",
            storage_path=tracking.checkpoint_root(),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=ray_callbacks,
        ),
        datasets=_datasets(shards, config),
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        if client.get_run(run_id).info.status == "RUNNING":  # a tune that stopped this trial has ended it KILLED
            client.set_terminated(run_id, status="FAILED")
        raise TrainingError(
            f"training failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the run "
            f"{run_id} holds what was logged; `mtc train --resume {run_id}` continues from the last checkpoint"
        ) from err
    with result.checkpoint.as_directory() as folder:
        bundle = ModelBundle.load(Path(folder) / "model")
    with tempfile.TemporaryDirectory() as folder:
        bundle.save(Path(folder) / "model")
        client.log_artifacts(run_id, str(Path(folder) / "model"), "model")
    registered = log_model(run_id, bundle, register)
    client.set_terminated(run_id)
    return TrainResult(run_id, exp_id, dict(result.metrics or {}), bundle, result.checkpoint.path, registered)


def config_of_run(run_id: str, overrides: list[str] | None = None) -> TrainConfig:
    """The resolved config an unfinished run was started with (for ``--resume``), plus overrides."""
    import mlflow

    from mtc.config import load_config

    tracking.configure()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise MtcError(f"--resume {run_id}: no such MLflow run in {tracking.tracking_uri()}") from None
    if run.info.status == "FINISHED":
        raise MtcError(f"--resume {run_id}: the run finished; there is nothing to continue")
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=folder)
        return load_config(TrainConfig, Path(path), overrides or [])


def _log_inputs(client, run_id: str, config: TrainConfig, prepared: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = _flatten(config.model_dump(mode="json"))
    flat.update({f"n_{k}": v for k, v in prepared["counts"].items()})
    params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(params), 90):
        client.log_batch(run_id, params=params[i : i + 90])
    client.log_text(run_id, dump_yaml(config), "config.yaml")
    client.log_dict(run_id, prepared["manifest"], "dataset/manifest.json")
    tasks = [t.name for t in config.tasks]
    client.log_dict(
        run_id, {"tasks": tasks, "mean": prepared["mean"], "std": prepared["std"]}, "dataset/normalizer.json"
    )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            flat[name] = json.dumps(value, separators=(",", ":"))
        else:
            flat[name] = value
    return flat


def describe_metrics(metrics: dict[str, float], config: TrainConfig) -> list[tuple[str, dict[str, float]]]:
    """Test metrics per task, in task order, for the terminal table."""
    rows = []
    for task in config.tasks:
        prefix = f"test/{task.name}/"
        values = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        rows.append((task.name, values))
    return rows
