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
        ("batch_atoms=0", "batch_atoms"),
        ("budget_minutes=0", "budget_minutes"),
    ],
)
def test_mistakes_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, TINY, [override])


def test_batch_atoms_needs_the_splits_in_memory() -> None:
    assert load_config(TrainConfig, TINY, ["batch_atoms=4096"]).batch_atoms == 4096
    with pytest.raises(ConfigError, match="batch_atoms packs the splits held in worker memory"):
        load_config(TrainConfig, TINY, ["batch_atoms=4096", "data_cache=stream"])


def test_fixed_weights_only_with_the_fixed_strategy_and_some_task_served() -> None:
    with pytest.raises(ConfigError, match="strategy 'dwa' sets its own"):
        load_config(TrainConfig, TINY, ["loss.strategy=dwa", "loss.weights={band_gap: 2}"])
    with pytest.raises(ConfigError, match="every task is auxiliary"):
        load_config(TrainConfig, None, ["tasks=[{name: volume, auxiliary: true}]"])


def test_the_auxiliary_config_loads() -> None:
    config = load_config(TrainConfig, "configs/mt3_aux.yaml")
    aux = [t for t in config.tasks if t.auxiliary]
    assert [t.column for t in aux] == ["volume", "total_magnetization"] and all(t.per_atom for t in aux)


def test_overrides_nest_parse_yaml_values_and_name_mistakes() -> None:
    from mtc.config import ConfigError, parse_overrides

    assert parse_overrides(["optim.lr=1e-3", "tasks=[a, b]", "model.groups=null", "run_name=x=y"]) == {
        "optim": {"lr": 1e-3},
        "tasks": ["a", "b"],
        "model": {"groups": None},
        "run_name": "x=y",
    }
    for bad, message in [("lr", "expected key=value"), ("=3", "expected key=value"), ("a=[1", "not valid YAML")]:
        with pytest.raises(ConfigError, match=message):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="'a' is set to a value and also used as a section"):
        parse_overrides(["a=1", "a.b=2"])


def test_deep_merge_recurses_and_the_update_wins() -> None:
    from mtc.config import deep_merge

    base = {"optim": {"lr": 0.1, "name": "adam"}, "epochs": 3, "tasks": [1]}
    merged = deep_merge(base, {"optim": {"lr": 0.2}, "tasks": [2], "new": {"k": 1}})
    assert merged == {"optim": {"lr": 0.2, "name": "adam"}, "epochs": 3, "tasks": [2], "new": {"k": 1}}
    assert base["optim"]["lr"] == 0.1  # the inputs are left as they were


def _lrs(cfg, epochs: int, scores=None) -> list[float]:
    import torch

    from mtc.train.optim import EpochPlan, build_optimizer, build_scheduler

    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_scheduler(optimizer, cfg, EpochPlan(epochs))
    seen = []
    for epoch in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step(scores[epoch]) if scores else scheduler.step()
    return seen


def test_optimisers_and_schedules_by_hand() -> None:
    import torch

    from mtc.config import OptimConfig
    from mtc.train.optim import build_optimizer

    param = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer(param, OptimConfig(name="sgd", momentum=0.5)), torch.optim.SGD)
    assert isinstance(build_optimizer(param, OptimConfig(name="adamw", weight_decay=0.1)), torch.optim.AdamW)
    # warm-up then cosine: lr * (e + 1) / (w + 1) during warm-up, then half a cosine over the remaining epochs
    assert _lrs(OptimConfig(lr=1.0, warmup_epochs=1), 3) == pytest.approx([0.5, 1.0, 0.5])
    assert _lrs(OptimConfig(lr=1.0, scheduler="step", milestones=[1, 2], gamma=0.1), 3) == pytest.approx(
        [1.0, 0.1, 0.01]
    )
    assert _lrs(OptimConfig(lr=1.0, scheduler="none"), 2) == [1.0, 1.0]
    # plateau: the lr drops after `plateau_patience` epochs without a better score
    plateau = OptimConfig(lr=1.0, scheduler="plateau", plateau_patience=1, gamma=0.5)
    assert _lrs(plateau, 4, scores=[1.0, 1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0, 0.5])
