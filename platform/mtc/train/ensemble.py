"""Deep ensembles as one model: K training runs under one parent MLflow run, calibrated on the validation split.

Member k is an ordinary Ray Train run (``mtc.train.trainer.train``, a child of the parent run) with seed
``seed + k`` on the same split; with ``bootstrap`` it trains on a Poisson bootstrap resample of the training split
(``split.bootstrap = k``). The members run one after another: each is already a data-parallel Ray Train run
that takes the workers the config asks for, and on a cluster ``scaling.workers`` / ``--gpus`` is what widens it.
Then the driver predicts the validation and test splits with all members in one pass
(``mtc.model.ensemble.EnsembleInference``), fits the interval calibration on validation
(``mtc.model.calibration``) and logs to the parent: the ensemble-mean metrics under the usual keys
(``test/<task>/mae`` ...), the mean member's (``test/<task>/member_mae``), coverage, miscalibration area and
spread-error Spearman ρ per task and split, the test predictions with their intervals, the calibration and
error-vs-spread plots and the one bundle that holds every member, with the training domain (``mtc.model.domain``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtc import tracking
from mtc.config import TrainConfig
from mtc.data.batching import collate_arrow
from mtc.model.bundle import ModelBundle
from mtc.model.calibration import Calibration, calibration_metrics, coverage_curve, fit_quantiles
from mtc.model.domain import Domain, training_domain
from mtc.model.reliability import brier_score, reliability
from mtc.tasks import TaskSpec
from mtc.train.datasets import prepare_splits, read_split
from mtc.train.finetune import ParentModel
from mtc.train.loop import MODEL_DIR
from mtc.train.metrics import flatten_metrics, metric_key, regression_metrics, task_metrics
from mtc.train.trainer import TrainingError, TrainResult, log_inputs, train

MemberCallbacks = Callable[[int, TrainConfig], contextlib.AbstractContextManager[list]]


@dataclass
class EnsemblePredictions:
    """Physical predictions of every member on one split. members: (K, n, T); target: (n, T); mask: bool (n, T)."""

    ids: list[str]
    members: np.ndarray
    target: np.ndarray
    mask: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """(n, T) the ensemble's prediction: mean value, or mean probability."""
        return self.members.mean(axis=0)

    @property
    def spread(self) -> np.ndarray:
        """(n, T) the members' standard deviation."""
        return self.members.std(axis=0)


def member_config(config: TrainConfig, k: int, bootstrap: bool) -> TrainConfig:
    """Member k's config: seed ``seed + k``, the same split (resampled as bootstrap ``k`` when asked)."""
    split = config.split.model_copy(update={"bootstrap": k if bootstrap else None})
    name = f"{config.run_name}-member-{k}" if config.run_name else f"member-{k}"
    return config.model_copy(update={"seed": config.seed + k, "split": split, "run_name": name})


def fit_calibration(val: EnsemblePredictions, tasks: Sequence[TaskSpec]) -> Calibration:
    """Each served regression task's conformal factors on its labelled validation rows (None if it has none)."""
    quantiles = {}
    for k, task in enumerate(tasks):
        if task.kind != "regression" or task.auxiliary:
            continue
        rows = val.mask[:, k]
        error = val.mean[rows, k] - val.target[rows, k]
        quantiles[task.name] = fit_quantiles(error, val.spread[rows, k]) if rows.any() else None
    return Calibration(quantiles)


def ensemble_metrics(
    split: str, preds: EnsemblePredictions, tasks: Sequence[TaskSpec], calibration: Calibration
) -> dict[str, float]:
    """The ensemble mean's metrics (the keys a single run logs), ``member_mae`` (mean over members) and, per
    calibrated task, ``calibration_metrics`` on ``split``; per binary task ``member_brier`` (mean over members) and
    ``probability_std`` (the members' standard deviation of the probability, mean over crystals)."""
    metrics = flatten_metrics(split, task_metrics(preds.mean, preds.target, preds.mask, tasks))
    for k, task in enumerate(tasks):
        rows = preds.mask[:, k]
        if not rows.any():
            continue
        target = preds.target[rows, k]
        if task.kind == "binary":
            member_brier = np.mean([brier_score(m[rows, k], target) for m in preds.members])
            metrics[metric_key(split, task.name, "member_brier")] = float(member_brier)
            metrics[metric_key(split, task.name, "probability_std")] = float(preds.spread[rows, k].mean())
        if task.name not in calibration.quantiles:
            continue
        member_mae = np.mean([regression_metrics(m[rows, k], target)["mae"] for m in preds.members])
        metrics[metric_key(split, task.name, "member_mae")] = float(member_mae)
        quantiles = calibration.quantiles[task.name]
        if quantiles is not None:
            found = calibration_metrics(preds.mean[rows, k] - target, preds.spread[rows, k], quantiles)
            metrics.update({metric_key(split, task.name, name): value for name, value in found.items()})
    return metrics


def predictions_table(preds: EnsemblePredictions, tasks: Sequence[TaskSpec], calibration: Calibration) -> pa.Table:
    """id, then per task ``<task>`` (mean), ``<task>_std`` (calibrated), ``<task>_spread`` (raw) and ``<task>_true``."""
    columns = {"id": pa.array(preds.ids, pa.string())}
    for k, task in enumerate(tasks):
        columns[task.name] = pa.array(preds.mean[:, k])
        if task.name in calibration.quantiles:
            columns[f"{task.name}_std"] = pa.array(calibration.std_factor(task.name) * preds.spread[:, k])
        columns[f"{task.name}_spread"] = pa.array(preds.spread[:, k])
        columns[f"{task.name}_true"] = pa.array(preds.target[:, k], mask=~preds.mask[:, k])
    return pa.table(columns)


def domain_of(shards: Path, config: TrainConfig, val: EnsemblePredictions, calibration: Calibration) -> Domain:
    """The training split's elements and largest cell (read from the shards), and each calibrated task's largest
    validation spread."""
    import pyarrow.parquet as pq

    from mtc.data.shards import shard_paths
    from mtc.data.splits import TRAIN, split_codes

    atoms = []
    s = config.split
    for path in shard_paths(shards):
        table = pq.read_table(path, columns=["id", "atomic_numbers"])
        codes = split_codes(table.column("id").to_pylist(), s.val, s.test, s.seed, s.train_fraction)
        rows = table.column("atomic_numbers").filter(pa.array(codes == TRAIN))
        atoms += [np.asarray(a, dtype=np.int64) for a in rows.to_pylist()]
    names = [t.name for t in config.tasks]
    spread = {task: val.spread[:, names.index(task)] for task in calibration.quantiles}
    return training_domain(atoms, spread)


def predict_split(bundles: list[ModelBundle], shards: Path, config: TrainConfig, split: str) -> EnsemblePredictions:
    """Every member's physical predictions on ``split`` (read from the shards here), in one pass."""
    from mtc.model.ensemble import EnsembleInference

    models = [b.build() for b in bundles]
    forward = EnsembleInference(models)
    mean, std = bundles[0].mean, bundles[0].std
    ids, members, targets, masks = [], [], [], []
    rows = pa.concat_tables(read_split(shards, config, split))
    for start in range(0, rows.num_rows, config.batch_size):
        batch = collate_arrow(rows.slice(start, config.batch_size), config.tasks)
        members.append(models[0].to_physical(forward(batch), mean, std).float().numpy())
        targets.append(batch.targets.numpy())
        masks.append(batch.mask.numpy())
        ids.extend(batch.ids)
    n_tasks = len(config.tasks)
    return EnsemblePredictions(
        ids,
        np.concatenate(members, axis=1) if members else np.zeros((len(models), 0, n_tasks), np.float32),
        np.concatenate(targets) if targets else np.zeros((0, n_tasks), np.float32),
        np.concatenate(masks) if masks else np.zeros((0, n_tasks), bool),
    )


def train_ensemble(
    shards: Path,
    config: TrainConfig,
    n_members: int,
    bootstrap: bool = False,
    callbacks: MemberCallbacks | None = None,
    parent: ParentModel | None = None,
) -> TrainResult:
    """Train ``n_members`` >= 2 members under one parent run; returns the parent's result and the ensemble bundle.

    Given ``parent`` (fine-tuning), every member starts from that model, each with its own seed.

    ``callbacks(k, member_config)`` may give a context that yields each member's Ray Train callbacks (progress).
    A member that fails ends the parent FAILED; its finished siblings stay as child runs.
    """
    import mlflow

    shards = Path(shards).resolve()
    prepared = prepare_splits(shards, config)
    uri = tracking.configure()
    client = mlflow.MlflowClient(uri)
    tags = {"mtc.shards": str(shards), "mtc.ensemble.members": str(n_members), "mtc.ensemble.bootstrap": str(bootstrap)}
    parent_run = client.create_run(tracking.experiment_id(config.experiment), run_name=config.run_name, tags=tags)
    run_id = parent_run.info.run_id
    log_inputs(client, run_id, config, prepared, parent)
    client.log_param(run_id, "ensemble.members", n_members)
    client.log_param(run_id, "ensemble.bootstrap", bootstrap)
    results = []
    try:
        for k in range(n_members):
            member = member_config(config, k, bootstrap)
            with callbacks(k, member) if callbacks else contextlib.nullcontext([]) as ray_callbacks:
                results.append(
                    train(shards, member, parent_run_id=run_id, ray_callbacks=ray_callbacks or None, parent=parent)
                )
        bundles = [r.bundle for r in results]
        val, test = (predict_split(bundles, shards, config, split) for split in ("val", "test"))
        calibration = fit_calibration(val, config.tasks)
        domain = domain_of(shards, config, val, calibration)
        bundle = ModelBundle.ensemble(bundles, calibration.to_dict(), domain.to_dict())
        metrics = {**ensemble_metrics("val", val, config.tasks, calibration)}
        metrics.update(ensemble_metrics("test", test, config.tasks, calibration))
        _log_ensemble(client, run_id, metrics, bundle, {"val": val, "test": test}, config.tasks, calibration)
    except Exception as err:
        client.set_terminated(run_id, status="FAILED")
        if isinstance(err, TrainingError):
            raise
        raise TrainingError(f"ensemble {run_id} failed ({type(err).__name__}: {err})") from err
    client.set_terminated(run_id)
    return TrainResult(
        run_id, parent_run.info.experiment_id, metrics, bundle, results[-1].checkpoint_path, prepared.invalid_labels
    )


def _log_ensemble(client, run_id: str, metrics, bundle: ModelBundle, preds: dict, tasks, calibration) -> None:
    """Metrics, ``predictions/test_predictions.parquet``, ``plots/*.png`` (calibration and error-vs-spread per
    regression task, reliability per binary task: the mean probability on val and test) and ``model/`` on the
    parent run."""
    import math

    import pyarrow.parquet as pq
    from mlflow.entities import Metric

    from mtc.train.plots import calibration_plot, error_vs_spread_plot, reliability_plot

    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items() if math.isfinite(v)])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        pq.write_table(predictions_table(preds["test"], tasks, calibration), folder / "test_predictions.parquet")
        client.log_artifact(run_id, str(folder / "test_predictions.parquet"), "predictions")
        plots = folder / "plots"
        plots.mkdir()
        test = preds["test"]
        for k, task in enumerate(tasks):
            if task.kind == "binary" and test.mask[:, k].any():
                diagrams = {
                    s: reliability(p.mean[p.mask[:, k], k], p.target[p.mask[:, k], k]) for s, p in preds.items()
                }
                (plots / f"reliability_{task.name}.png").write_bytes(reliability_plot(diagrams, task.name))
            quantiles = calibration.quantiles.get(task.name)
            if quantiles is None:
                continue
            curves = {}
            for split, p in preds.items():
                rows = p.mask[:, k]
                curves[split] = coverage_curve(p.mean[rows, k] - p.target[rows, k], p.spread[rows, k], quantiles)
            rows = test.mask[:, k]
            png = calibration_plot(curves, task.name)
            (plots / f"calibration_{task.name}.png").write_bytes(png)
            std = calibration.std_factor(task.name) * test.spread[rows, k]
            error = np.abs(test.mean[rows, k] - test.target[rows, k])
            (plots / f"error_vs_spread_{task.name}.png").write_bytes(
                error_vs_spread_plot(error, std, task.name, task.unit)
            )
        client.log_artifacts(run_id, str(plots), "plots")
        bundle.save(folder / MODEL_DIR)
        client.log_artifacts(run_id, str(folder / MODEL_DIR), MODEL_DIR)
