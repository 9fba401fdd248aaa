"""CGCNN trunk, heads and MultiTaskCGCNN on real crystals."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.nn import functional as F

from mtc.data.batching import CrystalBatch, collate_arrow
from mtc.model.cgcnn import CGCNNTrunk, ConvLayer, EdgeIndex, GaussianExpansion, compile_convolutions
from mtc.model.losses import MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN, model_from_config
from mtc.tasks import as_tasks
from tests.model.conftest import graph_table

TASKS = as_tasks(
    [
        {"name": "formation_energy_per_atom", "unit": "eV/atom"},
        {"name": "band_gap", "unit": "eV"},
        {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
    ]
)


def trained_stats_model(table: pa.Table, **kwargs) -> MultiTaskCGCNN:
    """A model whose BatchNorm running statistics are not trivial, in eval mode."""
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=16, h_fea_len=8, n_conv=2, **kwargs)
    with torch.no_grad():
        for _ in range(3):
            model(collate_arrow(table, TASKS))
    return model.eval()


def test_gaussian_expansion() -> None:
    expansion = GaussianExpansion()
    assert expansion.n_features == 41
    dist = torch.tensor([0.0, 1.234, 8.0])
    expected = np.exp(-(((dist.numpy()[:, None] - np.arange(0, 8.2, 0.2)[None, :41]) / 0.2) ** 2))
    np.testing.assert_allclose(expansion(dist).numpy(), expected, rtol=1e-5, atol=1e-7)
    assert expansion(dist)[2, 40] == 1.0
    # negligible Gaussians are exactly 0, never float32 denormals (which slow CPU matmuls ~10x)
    values = expansion(torch.linspace(0, 8, 1001))
    assert ((values == 0) | (values > 1e-20)).all() and (values == 0).any()


@pytest.mark.parametrize("train", [True, False])
def test_split_conv_equals_concatenated(demo_table: pa.Table, train: bool) -> None:
    torch.manual_seed(1)
    batch = collate_arrow(demo_table)
    conv = ConvLayer(atom_fea_len=16, nbr_fea_len=41).double().train(train)
    if not train:
        conv.bn1.running_mean.uniform_(-1, 1)
        conv.bn2.running_var.uniform_(0.5, 2)
    atom_fea = torch.randn(batch.atomic_numbers.numel(), 16, dtype=torch.float64, requires_grad=True)
    edge_fea = GaussianExpansion()(batch.edge_dist).double()
    src, dst = batch.edge_src, batch.edge_dst

    split = conv(atom_fea, edge_fea, src, dst)
    (grad_split,) = torch.autograd.grad(split.square().sum(), conv.fc_full.weight)

    z = torch.cat([atom_fea[dst], atom_fea[src], edge_fea], dim=1)
    filt, core = conv.bn1(conv.fc_full(z)).chunk(2, dim=1)
    summed = torch.zeros_like(atom_fea).index_add_(0, dst, torch.sigmoid(filt) * F.softplus(core))
    concatenated = F.softplus(atom_fea + conv.bn2(summed))
    (grad_concat,) = torch.autograd.grad(concatenated.square().sum(), conv.fc_full.weight)

    torch.testing.assert_close(split, concatenated, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_split, grad_concat, rtol=1e-9, atol=1e-9)


def without_last_edge(batch: CrystalBatch) -> CrystalBatch:
    """``batch`` with its last edge dropped: the last atom has one neighbour fewer than the others."""
    return replace(batch, edge_src=batch.edge_src[:-1], edge_dst=batch.edge_dst[:-1], edge_dist=batch.edge_dist[:-1])


def test_edge_index_broadcasts_and_reshapes_exactly_where_edges_are_regular(demo_table: pa.Table) -> None:
    batch = collate_arrow(demo_table)
    n_atoms = batch.atomic_numbers.numel()
    centre, messages = torch.randn(n_atoms, 6), torch.randn(batch.edge_dst.numel(), 2, 3)
    regular, irregular = EdgeIndex.of(batch), EdgeIndex.of(without_last_edge(batch))
    assert regular.degree == 12 and irregular.degree is None  # mp36k crystals: 12 neighbours each at 8 Å
    for edges in (regular, irregular):
        n_edges = edges.dst.numel()
        gathered = edges.add_centre_(torch.ones(n_edges, 6), centre)
        torch.testing.assert_close(gathered, 1 + centre[edges.dst])
        expected = torch.zeros(n_atoms, 2, 3).index_add_(0, edges.dst, messages[:n_edges])
        torch.testing.assert_close(edges.sum_at_centre(messages[:n_edges], n_atoms), expected)
    shuffled = torch.randperm(batch.edge_dst.numel())  # same degree, but edges no longer grouped by centre
    moved = replace(batch, edge_src=batch.edge_src[shuffled], edge_dst=batch.edge_dst[shuffled])
    assert EdgeIndex.of(moved).degree is None


def test_shapes(demo_table: pa.Table) -> None:
    batch = collate_arrow(demo_table, TASKS)
    trunk = CGCNNTrunk(atom_fea_len=16, n_conv=2)
    assert trunk.atom_features(batch).shape == (batch.atomic_numbers.numel(), 16)
    assert trunk(batch).shape == (24, 16)
    assert "element_table" in trunk.state_dict() and trunk.element_table.shape == (101, 92)
    model = MultiTaskCGCNN(TASKS, atom_fea_len=16, h_fea_len=8, n_conv=2, n_h=3)
    assert model(batch).shape == (24, 3)
    assert model.crystal_features(batch).shape == (24, 16)
    grouped = MultiTaskCGCNN(TASKS, atom_fea_len=16, groups=[["band_gap", "is_metal"], ["formation_energy_per_atom"]])
    assert len(grouped.trunks) == 2 and grouped.trunk_of_task == [1, 0, 0]
    assert grouped(batch).shape == (24, 3) and grouped.crystal_features(batch).shape == (24, 32)


def test_bad_groups() -> None:
    names = [t.name for t in TASKS]
    for groups in ([["band_gap"]], [[*names, "x"]], [[], names], [names, ["band_gap"]]):
        with pytest.raises(ValueError, match="partition"):
            MultiTaskCGCNN(TASKS, groups=groups)


def test_atom_permutation_invariance(demo_table: pa.Table) -> None:
    model = trained_stats_model(demo_table)
    rows = demo_table.to_pylist()
    rng = np.random.default_rng(0)
    for row in rows:
        n = len(row["atomic_numbers"])
        perm = rng.permutation(n)  # new position i holds old atom perm[i]
        inverse = np.argsort(perm)
        edge_order = rng.permutation(len(row["edge_src"]))
        row["atomic_numbers"] = [row["atomic_numbers"][p] for p in perm]
        row["edge_src"] = inverse[np.array(row["edge_src"])][edge_order].tolist()
        row["edge_dst"] = inverse[np.array(row["edge_dst"])][edge_order].tolist()
        row["edge_dist"] = np.array(row["edge_dist"])[edge_order].tolist()
    permuted = pa.Table.from_pylist(rows, schema=demo_table.schema)
    with torch.no_grad():
        expected = model(collate_arrow(demo_table, TASKS))
        actual = model(collate_arrow(permuted, TASKS))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_batch_composition_does_not_change_predictions(demo_table: pa.Table) -> None:
    model = trained_stats_model(demo_table, groups=[["band_gap", "is_metal"], ["formation_energy_per_atom"]])
    pair = demo_table.slice(4, 2)
    with torch.no_grad():
        together = model(collate_arrow(pair, TASKS))
        alone = torch.cat([model(collate_arrow(pair.slice(i, 1), TASKS)) for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter(demo_table: pa.Table) -> None:
    torch.manual_seed(0)
    batch = collate_arrow(demo_table, TASKS)
    model = MultiTaskCGCNN(
        TASKS,
        atom_fea_len=16,
        h_fea_len=8,
        n_conv=2,
        n_h=2,
        groups=[["band_gap"], ["formation_energy_per_atom", "is_metal"]],
    )
    loss = MultiTaskLoss(TASKS, mean=[-1.0, 1.0, 0.0], std=[1.0, 1.5, 1.0])
    loss(model(batch), batch.targets, batch.mask).total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # a bias followed by training-mode BatchNorm has an (analytically) zero gradient
        if not name.endswith("fc_full.bias"):
            assert param.grad.abs().sum() > 0, name


def test_to_physical_and_config_round_trip(demo_table: pa.Table) -> None:
    model = trained_stats_model(demo_table, n_h=2, groups=[["band_gap", "is_metal"], ["formation_energy_per_atom"]])
    batch = collate_arrow(demo_table, TASKS)
    mean, std = np.array([-1.0, 1.2, 0.0], np.float32), np.array([0.5, 1.5, 1.0], np.float32)
    with torch.no_grad():
        raw = model(batch)
        physical = model.to_physical(raw, mean, std)
    torch.testing.assert_close(physical[:, 0], raw[:, 0] * 0.5 - 1.0)
    torch.testing.assert_close(physical[:, 1], raw[:, 1] * 1.5 + 1.2)
    torch.testing.assert_close(physical[:, 2], torch.sigmoid(raw[:, 2]))

    config = json.loads(json.dumps(model.config()))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = model_from_config(config, torch.load(buffer, weights_only=True)).eval()
    assert rebuilt.tasks == model.tasks and rebuilt.groups == model.groups
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), raw)


def test_a_training_batch_of_one_atom_trains() -> None:
    """#10.14: a batch holding one one-atom crystal used to raise in BatchNorm (one value per channel)."""
    row = {"id": "Po", "lattice": [[3.35, 0, 0], [0, 3.35, 0], [0, 0, 3.35]], "species": ["Po"]}
    table = graph_table([{**row, "frac_coords": [[0, 0, 0]], "formation_energy_per_atom": 0.1, "band_gap": 0.0}])
    batch = collate_arrow(table, TASKS)
    assert batch.atomic_numbers.numel() == 1
    model = MultiTaskCGCNN(TASKS, atom_fea_len=8, h_fea_len=8, n_conv=2).train()
    MultiTaskLoss(TASKS)(model(batch), batch.targets, batch.mask).total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_compiled_convolutions_are_the_same_function(demo_table: pa.Table) -> None:
    """#12: torch.compile'd convolutions give the eager model's outputs, gradients and BatchNorm statistics."""
    torch.manual_seed(0)
    eager = MultiTaskCGCNN(TASKS, atom_fea_len=16, h_fea_len=8, n_conv=3, shared_convs=2)
    fused = copy.deepcopy(eager)
    assert compile_convolutions(fused) == 5  # 2 shared + 1 per task
    loss = MultiTaskLoss(TASKS, mean=[-1.0, 1.0, 0.0], std=[1.0, 1.5, 1.0])
    for rows in (demo_table.slice(0, 15), demo_table.slice(15, 9)):  # two batch shapes, one compiled graph
        batch = collate_arrow(rows, TASKS)
        outputs = []
        for model in (eager, fused):
            model.zero_grad()
            out = model(batch)
            loss(out, batch.targets, batch.mask).total.backward()
            outputs.append(out.detach())
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
        scale = max(p.grad.abs().max() for p in eager.parameters())
        for (name, a), b in zip(eager.named_parameters(), fused.parameters(), strict=True):
            torch.testing.assert_close(b.grad / scale, a.grad / scale, rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(fused.state_dict(), eager.state_dict(), rtol=1e-4, atol=1e-5)  # running statistics
    batch = collate_arrow(demo_table, TASKS)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(batch), eager.eval()(batch), rtol=1e-4, atol=1e-5)
