"""The training driver: checks before work, the MLflow run, Ray Train's TorchTrainer, the logged model."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtc import tracking
from mtc.cluster import release_orphan_placement_groups
from mtc.config import TrainConfig, dump_yaml
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.train.datasets import PreparedSplits, prepare_splits, split_datasets
from mtc.train.finetune import (
    PARENT_ARTIFACT,
    PARENT_TAG,
    ParentModel,
    align_to_parent,
    check_graph_params,
)
from mtc.train.loop import MODEL_DIR, WorkerConfig, build_model, train_loop_per_worker
from mtc.train.metrics import split_metrics
from mtc.train.resources import WorkerPlan, check_compiler, check_resources


class TrainingError(MtcError):
    """Training failed; the message says where to look."""


@dataclass
class TrainResult:
    """A finished run: its final metrics (``best_epoch``, ``test/<task>/<metric>``) and the model; per task with a
    ``transform``, the labels outside its domain that trained as missing."""

    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    bundle: ModelBundle
    checkpoint_path: str
    invalid_labels: dict[str, int]


def train(
    shards: Path,
    config: TrainConfig,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    ray_callbacks: list | None = None,
    parent: ParentModel | None = None,
    in_process: bool = False,
) -> TrainResult:
    """Train on the graph shards in ``shards`` with Ray Train, tracked in MLflow (the model as run artifacts).

    Everything that can be checked is checked before a worker starts. ``resume_run_id`` continues an
    interrupted run from its last checkpoint (same run, same Ray storage). ``parent_run_id`` nests the run
    under another (a tune); ``ray_callbacks`` go to Ray Train's RunConfig (e.g. Tune's report callback).
    ``parent`` starts the model from another one (fine-tuning; the config's trunk width and depth become the
    parent's, see ``mtc.train.finetune.align_to_parent``): the run is tagged ``mtc.parent_model`` and keeps the
    parent's bundle under its ``parent/`` artifacts, which a resumed run starts from again. ``in_process`` runs the
    same loop in this process (Ray Train's local mode: one rank, no worker actors, no restarts) for many small runs
    on a small machine (benchmarks); ``config.scaling`` is then ignored.
    ``mtc.registry.models.publish`` turns the result into a registered model.
    """
    started = time.time()
    import mlflow
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    shards = Path(shards).resolve()
    plan = WorkerPlan.of(config.scaling)
    release_orphan_placement_groups()  # CPUs an earlier training of this process (a notebook's) still holds, dead
    check_resources(plan, ray.cluster_resources())
    check_compiler(config.compile, plan)
    if parent:
        config = align_to_parent(config, parent.bundle)[0]
    prepared = prepare_splits(shards, config)
    if parent:
        check_graph_params(parent.bundle.graph_params, prepared.manifest["params"], str(shards))
    uri = tracking.configure()
    client = mlflow.MlflowClient(uri)
    if resume_run_id:
        run = client.get_run(resume_run_id)
        client.update_run(resume_run_id, status="RUNNING")
    else:
        tags = {"mtc.shards": str(shards), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        tags.update({PARENT_TAG: parent.uri} if parent else {})
        run = client.create_run(tracking.experiment_id(config.experiment), run_name=config.run_name, tags=tags)
        log_inputs(client, run.info.run_id, config, prepared, parent)
    run_id = run.info.run_id

    datasets, in_memory = split_datasets(shards, config)
    if config.batch_atoms is not None and not in_memory:
        client.set_terminated(run_id, status="FAILED")
        raise TrainingError(
            "batch_atoms packs splits held in worker memory, and these do not fit (mtc.train.epoch_data."
            "WORKER_MEMORY_BYTES): drop batch_atoms to train with batch_size crystals per batch"
        )
    worker_config = WorkerConfig(
        train=config,
        mean=prepared.mean,
        std=prepared.std,
        graph_params=prepared.manifest["params"],
        run_id=run_id,
        tracking_uri=uri,
        threads=plan.torch_threads(ray.cluster_resources().get("CPU", 1)),
        parent=PARENT_TAG in run.data.tags,
        checkpoint_dir=tempfile.mkdtemp(prefix="mtc-checkpoint-") if in_process else None,
        in_memory=in_memory,
        deadline=started + 60 * config.budget_minutes if config.budget_minutes else None,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config.model_dump(mode="json"),
        scaling_config=RayScaling(
            num_workers=0 if in_process else plan.workers,
            use_gpu=plan.use_gpu,
            resources_per_worker=plan.resources_per_worker(),
            placement_strategy=config.scaling.placement.upper(),
        ),
        torch_config=TorchConfig(
            backend="nccl" if plan.use_gpu else "gloo", timeout_s=config.scaling.collective_timeout_s
        ),
        run_config=RunConfig(
            name=f"mtc-{run_id}",
            storage_path=tracking.checkpoint_root(),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=config.scaling.max_failures),
            callbacks=ray_callbacks,
        ),
        datasets=datasets,
        # in memory, every rank reads the whole training split and takes its own crystals each epoch
        dataset_config=DataConfig(datasets_to_split=[] if in_memory else ["train"]),
    )
    try:
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            bundle = ModelBundle.load(Path(folder) / MODEL_DIR)
            client.log_artifacts(run_id, str(Path(folder) / MODEL_DIR), MODEL_DIR)
    except Exception as err:
        if client.get_run(run_id).info.status == "RUNNING":  # a tune that stopped this trial has ended it KILLED
            client.set_terminated(run_id, status="FAILED")
        raise TrainingError(
            f"training failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); the run "
            f"{run_id} holds what was logged; `mtc train --resume {run_id}` continues from the last checkpoint"
        ) from err
    finally:
        if worker_config.checkpoint_dir:
            shutil.rmtree(worker_config.checkpoint_dir, ignore_errors=True)
    client.set_terminated(run_id)
    metrics = dict(result.metrics or {})
    return TrainResult(run_id, run.info.experiment_id, metrics, bundle, result.checkpoint.path, prepared.invalid_labels)


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


def log_inputs(
    client, run_id: str, config: TrainConfig, prepared: PreparedSplits, parent: ParentModel | None = None
) -> None:
    """The resolved config (params and ``config.yaml``), split sizes, parameter count, manifest and normaliser;
    the parent model (fine-tuning) as a param and its bundle under ``parent/``."""
    from mlflow.entities import Param

    flat = _flatten(config.model_dump(mode="json"))
    flat.update({f"n_{k}": v for k, v in prepared.counts.items()})
    flat.update({f"n_invalid_labels.{task}": n for task, n in prepared.invalid_labels.items()})
    if parent:
        flat["parent_model"] = parent.uri
        with tempfile.TemporaryDirectory() as folder:
            client.log_artifacts(run_id, str(parent.bundle.save(Path(folder))), PARENT_ARTIFACT)
    # model size, so layouts and widths compare at equal parameters (one wide shared trunk vs narrow ones)
    flat["n_parameters"] = build_model(config, prepared.manifest["params"]["radius"]).n_parameters()
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
    client.log_text(run_id, dump_yaml(config), "config.yaml")
    client.log_dict(run_id, prepared.manifest, "dataset/manifest.json")
    normalizer = {"tasks": [t.name for t in config.tasks], "mean": prepared.mean, "std": prepared.std}
    client.log_dict(run_id, normalizer, "dataset/normalizer.json")


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
    test = split_metrics(metrics, "test")
    return [(task.name, test.get(task.name, {})) for task in config.tasks]
