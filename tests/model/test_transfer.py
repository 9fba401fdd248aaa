"""Starting a model from another (fine-tuning): the trunk along task paths, kept heads, freezing, param groups."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from mtc.config import ConfigError, TrainConfig, load_config
from mtc.data.batching import collate_arrow
from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.model.multitask import MultiTaskCGCNN
from mtc.model.transfer import freeze, hold_frozen_batchnorm, start_from, trunk_parameter_names
from mtc.train.finetune import align_to_parent, check_graph_params
from mtc.train.optim import build_optimizer, param_groups
from tests.model.test_cgcnn import TASKS

SIZE = {"atom_fea_len": 16, "h_fea_len": 8, "n_conv": 3}
NEW = [{"name": "band_gap", "unit": "eV"}, {"name": "bulk"}]


def source_model() -> MultiTaskCGCNN:
    torch.manual_seed(0)
    return MultiTaskCGCNN(TASKS, shared_convs=2, **SIZE)


def start(model: MultiTaskCGCNN, source: MultiTaskCGCNN, norm=((0.5, 0.0), (4.0, 1.0))):
    source_norm = ((0.1, 1.2, 0.0), (0.3, 1.5, 1.0))
    return start_from(model, source.config(), source.state_dict(), source_norm, norm)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_trunk_moves_along_each_tasks_path_whatever_the_layout() -> None:
    source = source_model()  # stem of 2 convolutions, then one per task
    whole = MultiTaskCGCNN(NEW, **SIZE)  # one trunk of 3 convolutions for both tasks
    done = start(whole, source)
    assert (done.kept_heads, done.new_heads) == (["band_gap"], ["bulk"])
    trunk = whole.trunks[0]
    assert same(trunk.embedding, source.trunks[0].embedding) and same(trunk.convs[1], source.trunks[0].convs[1])
    assert same(trunk.convs[2], source.branches[1][0])  # band_gap's own last convolution: band_gap is on this path
    split = MultiTaskCGCNN(list(reversed(NEW)), shared_convs=1, **SIZE)
    start(split, source)
    assert same(split.branches[1][1], source.branches[1][0])  # band_gap's branch from band_gap's
    assert same(split.branches[0][0], source.trunks[0].convs[1])  # a new task: the source's first task's path
    assert same(split.branches[0][1], source.branches[0][0])
    assert not same(split.heads[0], MultiTaskCGCNN(NEW, **SIZE).heads[1])  # a new head is a fresh one
    with pytest.raises(ValueError, match=r"atom_fea_len \(16 vs 32\)"):
        start(MultiTaskCGCNN(NEW, **{**SIZE, "atom_fea_len": 32}), source)


def test_a_kept_head_predicts_the_sources_physical_values(demo_table: pa.Table) -> None:
    """Its last layer is rescaled from the source's normaliser to the new one."""
    source = source_model().eval()
    model = MultiTaskCGCNN([TASKS[2], TASKS[1]], shared_convs=2, **SIZE).eval()
    norm = ((0.0, 3.0), (1.0, 0.25))
    assert start(model, source, norm).kept_heads == ["is_metal", "band_gap"]
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        theirs = source.to_physical(source(batch), (0.1, 1.2, 0.0), (0.3, 1.5, 1.0))
        mine = model.to_physical(model(batch), *norm)
    torch.testing.assert_close(mine, theirs[:, [2, 1]])


def test_freezing_param_groups_and_frozen_batchnorm() -> None:
    model = MultiTaskCGCNN(NEW, groups=[["band_gap"], ["bulk"]], **SIZE)  # a whole trunk per task
    frozen = set(freeze(model, 1))
    assert frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("trunks.0.embedding", "trunks.0.convs.0"))
    } | {n for n, _ in model.named_parameters() if n.startswith(("trunks.1.embedding", "trunks.1.convs.0"))}
    assert all(p.requires_grad != (n in frozen) for n, p in model.named_parameters())
    groups = param_groups(model.named_parameters(), trunk_parameter_names(model), lr=0.01, trunk_lr=0.1)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    heads = {id(p) for p in model.heads.parameters()}
    assert heads == {id(p) for p in groups[0]["params"]}
    optimizer = build_optimizer(groups, load_config(TrainConfig, "configs/tiny.yaml").optim)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, pytest.approx(0.001)]
    model.train()
    hold_frozen_batchnorm(model)
    assert not model.trunks[1].convs[0].bn1.training and model.trunks[1].convs[1].bn1.training
    freeze(model, 3)
    assert param_groups(model.named_parameters(), trunk_parameter_names(model), 0.01, 0.1)[0]["params"]
    assert len(param_groups(model.named_parameters(), trunk_parameter_names(model), 0.01, 0.1)) == 1


def test_the_config_takes_the_sources_trunk_and_graph_mismatches_are_named() -> None:
    source = ModelBundle.from_model(source_model(), [0, 0, 0], [1, 1, 1], {"radius": 8.0, "max_neighbors": 12})
    config = load_config(TrainConfig, "configs/elastic.yaml", ["model.n_conv=2", "model.shared_convs=1"])
    aligned, notes = align_to_parent(config, source)
    assert (aligned.model.atom_fea_len, aligned.model.n_conv, aligned.model.shared_convs) == (16, 3, 1)
    assert notes == ["model.atom_fea_len 64 -> 16 (the source model's)", "model.n_conv 2 -> 3 (the source model's)"]
    assert align_to_parent(aligned, source) == (aligned, [])
    with pytest.raises(ConfigError, match=r"finetune\.freeze 'convs:4'"):
        align_to_parent(
            config.model_copy(update={"finetune": config.finetune.model_copy(update={"freeze": "convs:4"})}), source
        )
    with pytest.raises(ConfigError, match="freeze must be trunk, none or convs:k"):
        load_config(TrainConfig, "configs/elastic.yaml", ["finetune.freeze=head"])
    check_graph_params({"radius": 8.0, "max_neighbors": 12}, {"radius": 8.0, "max_neighbors": 12, "max_atoms": 9}, "s")
    with pytest.raises(MtcError, match=r"than shards/x \(radius 8.0 vs 6.0, source vs shards\)"):
        check_graph_params({"radius": 8.0, "max_neighbors": 12}, {"radius": 6.0, "max_neighbors": 12}, "shards/x")
