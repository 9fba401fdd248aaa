"""Fine-tuning's checks before work: the source model against the config and the shards (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtc.config import ConfigError, TrainConfig, describe_validation_error
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle

PARENT_TAG = "mtc.parent_model"
PARENT_ARTIFACT = "parent"
TRUNK_KEYS = ("atom_fea_len", "n_conv")  # the model config keys the trunk's shape comes from
GRAPH_KEYS = ("radius", "max_neighbors")  # the featurizer parameters that shape a graph


@dataclass
class ParentModel:
    """The model a run starts from: its bundle and where it came from (``models:/NAME/VERSION``, a run URI or a
    folder), which the run records as its parent."""

    bundle: ModelBundle
    uri: str


def align_to_parent(config: TrainConfig, bundle: ModelBundle) -> tuple[TrainConfig, list[str]]:
    """``config`` with the trunk's width and depth of the source model; one note per value changed.

    Raises:
        ConfigError: when the config no longer validates (e.g. ``shared_convs`` or ``finetune.freeze`` beyond the
            source's depth), naming the key.
    """
    source = bundle.model_config
    changed = {key: source[key] for key in TRUNK_KEYS if getattr(config.model, key) != source[key]}
    notes = [
        f"model.{key} {getattr(config.model, key)} -> {value} (the source model's)" for key, value in changed.items()
    ]
    if not changed:
        return config, notes
    data = config.model_dump(mode="json")
    data["model"].update(changed)
    try:
        return TrainConfig.model_validate(data), notes
    except ValueError as err:
        detail = describe_validation_error(err) if hasattr(err, "errors") else str(err)
        raise ConfigError(
            f"with the source model's trunk ({', '.join(notes)}) the config is invalid: {detail}"
        ) from None


def check_graph_params(source: dict[str, Any], shards: dict[str, Any], where: str) -> None:
    """The shards' graphs must be built as the source model's were (neighbour radius and count).

    Raises:
        MtcError: naming each parameter that differs and the shards folder ``where``.
    """
    differ = [
        f"{key} {source.get(key)} vs {shards.get(key)}" for key in GRAPH_KEYS if source.get(key) != shards.get(key)
    ]
    if differ:
        raise MtcError(
            f"the source model was trained on graphs featurized with other parameters than {where} "
            f"({'; '.join(differ)}, source vs shards): featurize again with --radius/--max-neighbors as the source"
        )
