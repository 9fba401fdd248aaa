"""Run configuration: pydantic models, YAML files, ``--set key=value`` overrides, resolved dumps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtc.errors import MtcError


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
    batch_size: int = Field(64, ge=1, description="structures per Ray Data batch")
    rows_per_shard: int = Field(4096, ge=1, description="crystals per Parquet shard")

    def graph_params(self) -> dict[str, Any]:
        """The parameters that define the graphs (recorded in the manifest, compared on re-runs)."""
        return self.model_dump(include={"radius", "max_neighbors", "max_atoms", "min_distance"})


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "tasks=[a, b]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set optim.lr=0.001")
        try:
            value = yaml.safe_load(raw)
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


def load_config(model: type[BaseModel], path: Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """Build ``model`` from defaults, then the YAML file, then ``--set`` overrides.

    Raises ConfigError naming the offending key and value.
    """
    data = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
        )
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}: {problems}") from None


def dump_yaml(config: BaseModel) -> str:
    """The resolved configuration as YAML, loadable by ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
