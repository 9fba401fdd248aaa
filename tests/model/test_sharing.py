"""Partial sharing (``shared_convs``), per-task head depth, shared parameters and parameter counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch
from torch import nn

from mtc.data.batching import collate_arrow
from mtc.model.multitask import MultiTaskCGCNN, model_from_config
from tests.model.test_cgcnn import TASKS

NAMES = [t.name for t in TASKS]
SIZE = {"atom_fea_len": 16, "h_fea_len": 8, "n_conv": 3}


def test_a_shared_stem_then_upper_convolutions_per_task(demo_table: pa.Table) -> None:
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, shared_convs=1, **SIZE)
    assert model.groups == tuple((name,) for name in NAMES)  # default: one group per task
    assert len(model.trunks) == 1 and len(model.trunks[0].convs) == 1
    assert [len(branch) for branch in model.branches] == [2, 2, 2]
    batch = collate_arrow(demo_table, TASKS)
    out = model(batch)
    assert out.shape == (24, 3) and model.crystal_features(batch).shape == (24, 48)
    # task 0 reaches the stem and its own upper convolutions, never another task's
    grads = torch.autograd.grad(out[:, 0].sum(), list(model.parameters()), allow_unused=True)
    reached = {id(p) for p, g in zip(model.parameters(), grads, strict=True) if g is not None and g.abs().sum() > 0}
    assert all(id(p) in reached for p in model.branches[0].parameters() if p.dim() > 1)
    assert all(id(p) in reached for p in model.trunks[0].embedding.parameters())
    assert not any(id(p) in reached for p in [*model.branches[1].parameters(), *model.branches[2].parameters()])
    assert [id(p) for p in model.shared_parameters()] == [id(p) for p in model.trunks[0].parameters()]


def test_stem_and_groups_split_the_upper_convolutions(demo_table: pa.Table) -> None:
    groups = [["band_gap", "is_metal"], ["formation_energy_per_atom"]]
    model = MultiTaskCGCNN(TASKS, shared_convs=0, groups=groups, **SIZE)
    assert len(model.trunks[0].convs) == 0 and [len(b) for b in model.branches] == [3, 3]
    assert model.trunk_of_task == [1, 0, 0]
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in [*model.trunks[0].parameters(), *model.branches[0].parameters()]}
    assert model(collate_arrow(demo_table, TASKS)).shape == (24, 3)


def test_sharing_every_convolution_is_the_default_model(demo_table: pa.Table) -> None:
    torch.manual_seed(0)
    default = MultiTaskCGCNN(TASKS, **SIZE).eval()
    everything = MultiTaskCGCNN(TASKS, shared_convs=3, **SIZE).eval()
    assert everything.state_dict().keys() == default.state_dict().keys()
    everything.load_state_dict(default.state_dict())
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        torch.testing.assert_close(everything(batch), default(batch))


def test_head_layers_override_n_h() -> None:
    model = MultiTaskCGCNN(TASKS, n_h=1, head_layers={"band_gap": 3}, **SIZE)
    linears = [sum(isinstance(m, nn.Linear) for m in head.modules()) for head in model.heads]
    assert linears == [2, 4, 2]  # n_h hidden layers + the output layer
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskCGCNN(TASKS, head_layers={"volume": 2})
    with pytest.raises(ValueError, match="shared_convs"):
        MultiTaskCGCNN(TASKS, shared_convs=4, **SIZE)


def test_config_round_trips_the_new_options_and_reads_configs_without_them(demo_table: pa.Table) -> None:
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, shared_convs=1, head_layers={"is_metal": 2}, **SIZE).eval()
    config = json.loads(json.dumps(model.config()))
    rebuilt = model_from_config(config, model.state_dict()).eval()
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), model(batch))
    # a format-1 bundle written before these options has neither key: it builds the model it was saved from
    plain = MultiTaskCGCNN(TASKS, groups=[["band_gap"], ["formation_energy_per_atom", "is_metal"]], **SIZE)
    old = {k: v for k, v in plain.config().items() if k not in ("shared_convs", "head_layers")}
    model_from_config(old, plain.state_dict())


def test_parameter_counts_compare_layouts() -> None:
    shared = MultiTaskCGCNN(TASKS, **SIZE)
    separate = MultiTaskCGCNN(TASKS, groups=[[name] for name in NAMES], **SIZE)
    trunk = sum(p.numel() for p in shared.trunks[0].parameters())
    assert shared.n_parameters() == sum(p.numel() for p in shared.parameters())
    assert separate.n_parameters() - shared.n_parameters() == 2 * trunk
    assert separate.shared_parameters() == []  # no parameter serves two tasks
