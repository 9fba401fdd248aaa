"""The splits of a training run: checks, the normaliser (training rows only) and the Ray datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtc.config import TrainConfig
from mtc.data.shards import read_manifest, read_shards, shard_paths
from mtc.data.splits import SPLIT_NAMES, TRAIN, bootstrap_counts, split_codes
from mtc.errors import MtcError
from mtc.tasks import fit_normalizer, invalid_label_counts, task_targets
from mtc.train.epoch_data import fits_worker_memory
from mtc.train.resources import WorkerPlan

GRAPH_COLUMNS = ["id", "atomic_numbers", "edge_src", "edge_dst", "edge_dist"]
ARROW_INFLATION = 8  # in-memory Arrow bytes per compressed shard byte (zstd), measured on mp36k


@dataclass(frozen=True)
class PreparedSplits:
    """What the driver learns from the labels before training: the normaliser, split sizes, the manifest, and per
    task with a ``transform`` the labels outside its domain (trained as missing)."""

    mean: list[float]
    std: list[float]
    counts: dict[str, int]
    manifest: dict[str, Any]
    invalid_labels: dict[str, int]


def prepare_splits(shards: Path, config: TrainConfig) -> PreparedSplits:
    """Split counts and the normaliser fitted on the training rows only (missing labels ignored).

    Raises MtcError for a label column the shards lack, too little data for one batch per worker, or a task
    without a single training label.
    """
    manifest = read_manifest(shards)
    missing = [c for c in config.label_columns() if c not in manifest["label_columns"]]
    if missing:
        raise MtcError(
            f"{shards} has no label column {', '.join(missing)} (it has: {', '.join(manifest['label_columns'])}); "
            "featurize with --label, or change the tasks"
        )
    atoms = ["atomic_numbers"] if any(t.per_atom for t in config.tasks) else []  # per-atom targets divide by it
    labels = read_shards(shards, columns=["id", *atoms, *config.label_columns()])
    s = config.split
    codes = split_codes(labels.column("id").to_pylist(), s.val, s.test, s.seed, s.train_fraction)
    values, mask = task_targets(labels, config.tasks)
    train_rows = codes == TRAIN
    mean, std = fit_normalizer(values[train_rows], mask[train_rows], config.tasks)
    counts = {name: int((codes == code).sum()) for name, code in SPLIT_NAMES.items()}
    workers = WorkerPlan.of(config.scaling).workers
    per_worker = counts["train"] // workers
    if per_worker < config.batch_size:
        raise MtcError(
            f"{counts['train']} training crystals give each of the {workers} worker(s) {per_worker}, fewer than one "
            f"batch of {config.batch_size}; lower batch_size (--set batch_size=...) or use more data"
        )
    no_labels = [t.name for k, t in enumerate(config.tasks) if not mask[train_rows, k].any()]
    if no_labels:
        raise MtcError(f"no training crystal has a label for task(s) {', '.join(no_labels)}")
    return PreparedSplits(mean.tolist(), std.tolist(), counts, manifest, invalid_label_counts(labels, config.tasks))


def split_dataset(shards: Path, config: TrainConfig, split: str):
    """A Ray dataset of one split's graph rows, streamed from the shards."""
    import ray

    return ray.data.read_parquet([str(p) for p in shard_paths(shards)], columns=_columns(config)).map_batches(
        _keep_split, fn_kwargs=_split_kwargs(config, split), batch_format="pyarrow"
    )


def split_datasets(shards: Path, config: TrainConfig) -> tuple[dict, bool]:
    """The three splits, and whether each worker holds the training and validation splits in its own memory.

    Splits that fit Ray's object store are read by this process and held there (every epoch then skips reading and
    filtering), and also in each worker's memory when they fit ``WORKER_MEMORY_BYTES`` (every epoch then skips Ray
    Data too). ``data_cache: memory`` on splits that do not fit is Ray Data's job (it reads on the cluster and
    spills what the object store cannot hold).
    """
    import ray

    on_disk = sum(p.stat().st_size for p in shard_paths(shards) if p.exists())
    fits = on_disk * ARROW_INFLATION < 0.3 * ray.available_resources().get("object_store_memory", 0)
    if fits and config.data_cache != "stream":
        datasets = _splits_in_memory(shards, config)
    elif config.data_cache == "memory":
        datasets = {split: split_dataset(shards, config, split).materialize() for split in SPLIT_NAMES}
    else:
        return {split: split_dataset(shards, config, split) for split in SPLIT_NAMES}, False
    return datasets, fits_worker_memory(datasets["train"].size_bytes(), datasets["val"].size_bytes())


def _splits_in_memory(shards: Path, config: TrainConfig) -> dict:
    """The three splits read here and put in Ray's object store (a block per shard): no Ray Data job per split,
    whose task start-ups cost more than the reading on a few thousand crystals."""
    import ray

    return {split: ray.data.from_arrow(read_split(shards, config, split)) for split in SPLIT_NAMES}


def read_split(shards: Path, config: TrainConfig, split: str) -> list[pa.Table]:
    """One split's graph rows read by this process (plain pyarrow, no Ray): a table per shard, in shard order."""
    import pyarrow.parquet as pq

    kwargs = _split_kwargs(config, split)
    return [_keep_split(pq.read_table(p, columns=_columns(config)), **kwargs) for p in shard_paths(shards)]


def _columns(config: TrainConfig) -> list[str]:
    return [*GRAPH_COLUMNS, *config.label_columns()]


def _split_kwargs(config: TrainConfig, split: str) -> dict[str, Any]:
    """``_keep_split``'s arguments for ``split`` (the bootstrap resamples the training split only)."""
    s = config.split
    return {
        "code": SPLIT_NAMES[split],
        "val": s.val,
        "test": s.test,
        "seed": s.seed,
        "train_fraction": s.train_fraction,
        "bootstrap": s.bootstrap if split == "train" else None,
    }


def _keep_split(
    batch: pa.Table, code: int, val: float, test: float, seed: int, train_fraction: float, bootstrap: int | None
) -> pa.Table:
    ids = batch.column("id").to_pylist()
    keep = split_codes(ids, val, test, seed, train_fraction) == code
    if bootstrap is None:
        return batch.filter(pa.array(keep))
    counts = np.where(keep, bootstrap_counts(ids, bootstrap), 0)
    return batch.take(np.repeat(np.arange(len(ids)), counts))
