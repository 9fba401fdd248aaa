"""The orbit batch: atoms no convolution tells apart run once, and the frozen forward's outputs do not change."""

from __future__ import annotations

import pyarrow as pa
import torch

from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.model.cgcnn import mean_pool
from mtc.model.inference import InferenceModel
from mtc.model.orbits import atom_colours, orbit_batch
from tests.model.test_cgcnn import TASKS
from tests.model.test_inference import perturbed_model

ROCK_SALT = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5] * 3]


def rock_salt(repeat: int = 1, shift: float = 0.0) -> dict:
    """NaCl's conventional cell (8 atoms) repeated ``repeat`` times along a; ``shift`` moves the first Na (Å)."""
    a = 5.64
    frac = [[(x + k) / repeat, y, z] for k in range(repeat) for x, y, z in ROCK_SALT]
    frac[0][0] += shift / (a * repeat)
    species = (["Na"] * 4 + ["Cl"] * 4) * repeat
    lattice = [[a * repeat, 0, 0], [0, a, 0], [0, 0, a]]
    return {"id": f"NaCl-{repeat}-{shift}", "lattice": lattice, "species": species, "frac_coords": frac}


def graphs(*records: dict):
    """mtc's graphs of ``records``, collated."""
    table = pa.Table.from_pylist([{**r, "source": r["id"]} for r in records])
    return collate_arrow(featurize_table(table, FeaturizeConfig(), []))


def test_a_supercell_keeps_the_colours_and_the_predictions_of_its_cell() -> None:
    cell, supercell = graphs(rock_salt(1)), graphs(rock_salt(2))
    assert int(atom_colours(cell, 3).max()) + 1 == 2  # Na and Cl: every site of rock salt alike
    assert int(atom_colours(supercell, 3).max()) + 1 == 2
    orbits = orbit_batch(supercell, 3)
    assert orbits.atomic_numbers.tolist() == [11, 17] and orbits.atom_weights.tolist() == [8.0, 8.0]
    assert orbits.edge_src.numel() == 24  # each orbit's 12 edges, pointing at orbits
    frozen = InferenceModel(perturbed_model(shared_convs=1))
    torch.testing.assert_close(frozen(supercell), frozen(cell), rtol=1e-5, atol=1e-5)


def test_colours_split_where_a_neighbourhood_differs_and_never_cross_crystals() -> None:
    both = graphs(rock_salt(1), rock_salt(1, shift=0.05))
    colours = atom_colours(both, 3)
    first, moved = colours[:8], colours[8:]
    assert set(first.tolist()).isdisjoint(moved.tolist())  # the same cell twice in a batch: its own colours
    assert int(first.max()) - int(first.min()) + 1 == 2
    assert 2 < moved.unique().numel() <= 8  # the shifted Na and the atoms near it leave their orbits
    firsts = [colours.tolist().index(c) for c in colours.unique().tolist()]
    assert firsts == sorted(firsts) and colours[0] == 0  # numbered in order of their first atom


def test_the_orbit_forward_matches_every_atom_on_real_crystals(demo_table: pa.Table) -> None:
    batch = collate_arrow(demo_table, TASKS)
    for layout in ({"shared_convs": None}, {"shared_convs": 1}):
        model = perturbed_model(**layout)
        orbits = InferenceModel(model).orbit_batch(batch)
        assert orbits.atomic_numbers.numel() < 0.8 * batch.atomic_numbers.numel()
        assert orbits.atom_weights.sum() == batch.atomic_numbers.numel()
        with torch.no_grad():
            expected = model(batch)
        got, every_atom = InferenceModel(model)(batch), InferenceModel(model, orbits=False)(batch)
        torch.testing.assert_close(got, every_atom, rtol=1e-5, atol=1e-5)
        assert (got - expected).abs().max() <= 1e-4


def test_a_batch_without_repeated_neighbourhoods_is_kept_whole() -> None:
    batch = graphs(rock_salt(1, shift=0.05))
    assert orbit_batch(batch, 3, min_saving=0.5) is batch
    assert orbit_batch(batch, 3, min_saving=0.0).atom_weights is not None


def test_weighted_mean_pool_equals_the_pool_of_the_repeated_rows() -> None:
    torch.manual_seed(0)
    rows, index = torch.randn(5, 4), torch.tensor([0, 0, 1, 2, 2])
    weights = torch.tensor([1.0, 3.0, 2.0, 1.0, 4.0])
    repeated = weights.long()
    expected = mean_pool(rows.repeat_interleave(repeated, 0), index.repeat_interleave(repeated), 4)
    torch.testing.assert_close(mean_pool(rows, index, 4, weights), expected)


def test_training_on_the_orbit_batch_is_training_on_every_atom(demo_table: pa.Table) -> None:
    """Train mode: the same outputs, the same gradients of every parameter and the same BatchNorm running statistics
    from the orbit batch (weighted statistics) as from the whole batch."""
    batch = collate_arrow(demo_table, TASKS)
    orbits = orbit_batch(batch, 3, min_saving=0.0)
    assert orbits.atomic_numbers.numel() < 0.8 * batch.atomic_numbers.numel()
    models = []
    for inputs in (batch, orbits):
        model = perturbed_model(shared_convs=1).train()
        out = model(inputs)
        (out * torch.linspace(-1.0, 2.0, out.numel()).view_as(out)).sum().backward()
        models.append((out.detach(), model))
    (whole, reference), (reduced, model) = models
    torch.testing.assert_close(reduced, whole, rtol=1e-4, atol=1e-5)
    scale = max(float(p.grad.abs().max()) for p in reference.parameters())  # ~30 here
    for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
        # to float32 round-off of the largest gradient (a conv bias before BatchNorm has none but round-off)
        assert float((q.grad - p.grad).abs().max()) <= 1e-5 * scale, name
    for (name, b), c in zip(reference.named_buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-5, msg=name)
