"""Run configuration: pydantic models, YAML files, ``--set key=value`` overrides, resolved dumps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mtc.errors import MtcError
from mtc.tasks import TaskSpec, check_partition


class ConfigError(MtcError):
    """A configuration file or override that cannot be used; the message names the key."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class FeaturizeConfig(StrictModel):
    """How structures become graphs (CGCNN defaults) and what a structure must pass."""

    radius: float = Field(8.0, gt=0, description="neighbour cut-off, Å")
    max_neighbors: int = Field(12, ge=1, description="nearest neighbours kept per atom")
    max_atoms: int = Field(1000, ge=1, description="larger cells are rejected")
    min_distance: float = Field(0.5, ge=0, description="atoms closer than this (Å) are overlapping")
    max_reject_rate: float = Field(0.2, ge=0, le=1, description="fail when more rows than this are rejected")
    batch_size: int = Field(64, ge=1, description="fewest structures per featurize task (and shard)")
    rows_per_shard: int = Field(16384, ge=1, description="most crystals per Parquet shard (one per featurize task)")

    def graph_params(self) -> dict[str, Any]:
        """The parameters that define the graphs (recorded in the manifest, compared on re-runs)."""
        return self.model_dump(include={"radius", "max_neighbors", "max_atoms", "min_distance"})


def describe_validation_error(err: ValidationError) -> str:
    """A pydantic error as ``key.path: message; ...`` (one line, for users; our validators' messages as written)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "tasks=[a, b]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set optim.lr=0.001")
        try:
            value = _number_or(yaml.safe_load(raw))
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({err})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: '{part}' is set to a value and also used as a section")
        node[parts[-1]] = value
    return nested


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _number_or(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as text; on a command line it is a number."""
    return float(value) if isinstance(value, str) and _EXPONENT.match(value) else value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def with_base(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A spec mapping (a tune space, an experiment) with its ``base`` TrainConfig file merged under ``train``.

    ``base`` is relative to the spec file at ``path``; the result stands alone (``base: None``), so it can be
    logged and read back without the file.
    """
    base = data.get("base")
    if not base:
        return data
    base_path = Path(base) if Path(base).is_absolute() else Path(path).parent / base
    if not base_path.exists():
        raise ConfigError(f"{path}: base {base!r} does not exist (looked for {base_path})")
    return {**data, "base": None, "train": deep_merge(read_yaml(base_path), data.get("train") or {})}


def load_config(model: type[BaseModel], path: Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """Build ``model`` from defaults, then the YAML file, then ``--set`` overrides.

    Raises ConfigError naming the offending key and value.
    """
    data = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}: {describe_validation_error(err)}") from None


def dump_yaml(config: BaseModel) -> str:
    """A config model (run config, tune space, experiment spec) as YAML that validates back into the same model."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


class ModelConfig(StrictModel):
    """MT-CGCNN shape (CGCNN defaults); see ``mtc.model.multitask.MultiTaskCGCNN`` for the sharing layouts.

    ``shared_convs`` unset: ``groups`` partitions the tasks and each group has a whole trunk of its own (default:
    one trunk for all). ``shared_convs: k``: the embedding and the first k convolutions are shared by every task,
    the other ``n_conv - k`` belong to each group (default: one group per task).
    """

    atom_fea_len: int = Field(64, ge=1)
    h_fea_len: int = Field(128, ge=1)
    n_conv: int = Field(3, ge=1)
    n_h: int = Field(1, ge=1)
    groups: list[list[str]] | None = None
    shared_convs: int | None = Field(None, ge=0, description="convolutions shared by all tasks; unset: all of them")
    head_layers: dict[str, int] | None = Field(None, description="task -> hidden layers of its head (default n_h)")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.shared_convs is not None and self.shared_convs > self.n_conv:
            raise ValueError(f"shared_convs {self.shared_convs} exceeds n_conv {self.n_conv}")
        if any(n < 1 for n in (self.head_layers or {}).values()):
            raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
        return self


class LossConfig(StrictModel):
    """How task losses combine, and what happens to their gradients on the shared parameters.

    ``fixed``: sum of w_k L_k (weights by task name, default 1); ``uncertainty``: learned (Kendall 2018);
    ``dwa``: dynamic weight averaging (Liu 2019) at ``temperature``. ``gradient_surgery: pcgrad`` projects away
    the conflicting parts of the task gradients on the shared parameters (Yu 2020).
    """

    strategy: Literal["fixed", "uncertainty", "dwa"] = "fixed"
    weights: dict[str, float] | None = None
    temperature: float = Field(2.0, gt=0, description="dwa only: higher spreads the weights less")
    gradient_surgery: Literal["none", "pcgrad"] = "none"


class OptimConfig(StrictModel):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="SGD only")
    scheduler: Literal["cosine", "step", "plateau", "none"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs where 'step' multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    plateau_patience: int = Field(5, ge=0, description="'plateau': epochs without a better val score before lr drops")


class SplitConfig(StrictModel):
    """Deterministic from ``seed`` and each crystal's id; ``train_fraction`` subsamples train only."""

    val: float = Field(0.2, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    train_fraction: float = Field(1.0, gt=0, le=1)
    bootstrap: int | None = Field(
        None, description="train on a Poisson bootstrap resample of the training split, seeded (ensemble members)"
    )


class ScalingConfig(StrictModel):
    """Workers: ``gpus`` > 0 runs that many DDP workers on NCCL, one GPU each; else ``workers`` on gloo."""

    workers: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0)
    cpus_per_worker: float = Field(0.5, gt=0, description="keep below 1 on small machines: Ray Data needs CPUs")
    max_failures: int = Field(2, ge=0, description="worker failures survived by resuming from a checkpoint")
    placement: Literal["pack", "spread"] = Field("pack", description="spread: one worker per node where possible")
    collective_timeout_s: int = Field(600, ge=10)


FREEZE = re.compile(r"^(trunk|none|convs:(\d+))$")


class FinetuneConfig(StrictModel):
    """How a model started from another one (``mtc train --init SOURCE``) trains; inert without one, so one config
    trains both the fine-tuned model and its from-scratch baseline.

    ``freeze``: ``none``, ``trunk`` (embedding and every convolution) or ``convs:k`` (the embedding and the first
    k convolutions on every task's path). Frozen parameters keep the source's values, their BatchNorms its running
    statistics. ``trunk_lr`` multiplies ``optim.lr`` for the trunk parameters that still train (heads and loss
    weights: ``optim.lr``).
    """

    freeze: str = "none"
    trunk_lr: float = Field(1.0, gt=0, description="learning rate of the unfrozen trunk, as a multiple of optim.lr")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if not FREEZE.match(self.freeze):
            raise ValueError(f"freeze must be trunk, none or convs:k (k a number), got {self.freeze!r}")
        return self

    def frozen_convs(self, n_conv: int) -> int | None:
        """Convolutions frozen on each task's path (with the embedding), of ``n_conv``; None: nothing frozen."""
        match = FREEZE.match(self.freeze)
        if match.group(1) == "none":
            return None
        return n_conv if match.group(1) == "trunk" else int(match.group(2))


class TrainConfig(StrictModel):
    """Everything ``mtc train`` needs besides the data: the resolved form is logged to MLflow."""

    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    epochs: int = Field(30, ge=1)
    budget_minutes: float | None = Field(
        None,
        gt=0,
        description="train the epochs that fit this many minutes from the start of the run (its start-up, final "
        "test and logging included), at most `epochs`: after each epoch the run plans how many fit and the cosine "
        "schedule spans them; none: exactly `epochs`",
    )
    batch_size: int = Field(256, ge=1)
    batch_atoms: int | None = Field(
        None,
        ge=1,
        description="pack training and validation batches to at most this many atoms (a larger crystal alone) "
        "instead of batch_size crystals; needs the splits in worker memory (data_cache auto or memory)",
    )
    patience: int = Field(0, ge=0, description="stop after this many epochs without a better val score; 0: off")
    data_cache: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: read the splits once into Ray's object store, and into each worker's memory when "
        "they fit mtc.train.epoch_data.WORKER_MEMORY_BYTES; stream: re-read shards each epoch",
    )
    checkpoint_every_s: float = Field(
        60, ge=0, description="checkpoint (and log epoch metrics) after the first epoch, then at most this often"
    )
    compile: bool = Field(
        False,
        description="fuse each convolution's per-edge work with torch.compile (a C++ compiler on CPU, Triton on "
        "GPU): faster steps after seconds of compiling per worker",
    )
    orbit_batches: bool = Field(
        True,
        description="train and evaluate on orbit batches: atoms that no convolution tells apart (a crystal's "
        "symmetry-equivalent sites) computed once, weighted by their count in pooling and BatchNorm; the same "
        "losses and gradients to float32 round-off, ~2x fewer atoms and edges on mp36k (mtc.model.orbits)",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="bfloat16: mixed precision, the convolutions' matmuls and per-edge work autocast to bfloat16 "
        "(weights, optimiser, sums, pooling, heads and evaluation stay float32); fast on CPUs with AMX or "
        "AVX512-BF16 and on GPUs, slow on CPUs without them",
    )
    seed: int = 0
    experiment: str = "mtc"
    run_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        if self.batch_atoms is not None and self.data_cache == "stream":
            raise ValueError("batch_atoms packs the splits held in worker memory: use data_cache auto or memory")
        if self.split.val + self.split.test >= 1:
            raise ValueError("split.val + split.test must leave rows for training")
        if self.model.groups is not None:
            check_partition(self.model.groups, names)
        if self.loss.weights is not None:
            unknown = set(self.loss.weights) - set(names)
            if unknown:
                raise ValueError(f"loss.weights names unknown tasks {sorted(unknown)}")
            if self.loss.strategy != "fixed":
                raise ValueError(f"loss.weights are fixed weights; strategy {self.loss.strategy!r} sets its own")
        unknown = set(self.model.head_layers or {}) - set(names)
        if unknown:
            raise ValueError(f"model.head_layers names unknown tasks {sorted(unknown)}")
        if all(t.auxiliary for t in self.tasks):
            raise ValueError("every task is auxiliary: at least one must be served")
        frozen = self.finetune.frozen_convs(self.model.n_conv)
        if frozen is not None and frozen > self.model.n_conv:
            raise ValueError(
                f"finetune.freeze {self.finetune.freeze!r}: the model has {self.model.n_conv} convolutions"
            )
        return self

    def label_columns(self) -> list[str]:
        return sorted({t.column for t in self.tasks})
