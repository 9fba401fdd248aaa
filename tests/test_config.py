"""The sharing options of a TrainConfig: defaults, and mistakes that name the key."""

from __future__ import annotations

import pytest

from mtc.config import ConfigError, TrainConfig, load_config

TINY = "configs/tiny.yaml"


def test_defaults_keep_the_plain_model_and_loss() -> None:
    config = load_config(TrainConfig, TINY)
    assert config.model.shared_convs is None and config.model.head_layers is None
    assert (config.loss.strategy, config.loss.temperature, config.loss.gradient_surgery) == ("fixed", 2.0, "none")


def test_the_new_options_parse() -> None:
    config = load_config(
        TrainConfig,
        TINY,
        [
            "loss.strategy=dwa",
            "loss.temperature=1.5",
            "loss.gradient_surgery=pcgrad",
            "model.shared_convs=1",
            "model.head_layers={band_gap: 2}",
        ],
    )
    assert config.loss.strategy == "dwa" and config.loss.gradient_surgery == "pcgrad"
    assert config.model.shared_convs == 1 and config.model.head_layers == {"band_gap": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.shared_convs=3", "shared_convs 3 exceeds n_conv 2"),
        ("model.head_layers={volume: 2}", "head_layers names unknown tasks"),
        ("model.head_layers={band_gap: 0}", "head_layers must be >= 1"),
        ("loss.gradient_surgery=cagrad", "gradient_surgery"),
        ("loss.temperature=0", "temperature"),
        ("loss.dwa_epochs=3", "dwa_epochs"),
    ],
)
def test_mistakes_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, TINY, [override])


def test_fixed_weights_only_with_the_fixed_strategy_and_some_task_served() -> None:
    with pytest.raises(ConfigError, match="strategy 'dwa' sets its own"):
        load_config(TrainConfig, TINY, ["loss.strategy=dwa", "loss.weights={band_gap: 2}"])
    with pytest.raises(ConfigError, match="every task is auxiliary"):
        load_config(TrainConfig, None, ["tasks=[{name: volume, auxiliary: true}]"])


def test_the_auxiliary_config_loads() -> None:
    config = load_config(TrainConfig, "configs/mt3_aux.yaml")
    aux = [t for t in config.tasks if t.auxiliary]
    assert [t.column for t in aux] == ["volume", "total_magnetization"] and all(t.per_atom for t in aux)
