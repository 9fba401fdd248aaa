"""An epoch's batches from memory, when checkpoints fall, and buffered epoch metrics: without Ray."""

from __future__ import annotations

import mlflow
import numpy as np
import pyarrow as pa
import pytest

from mtc.data.batching import collate_arrow
from mtc.data.packing import Batching, atom_counts
from mtc.tasks import as_tasks
from mtc.train.checkpoint import CheckpointClock
from mtc.train.epoch_data import SplitInMemory, epoch_order
from mtc.train.evaluate import Predicted, in_batch_order
from mtc.train.run_log import RunLogger
from tests.model.conftest import demo_rows, graph_table

TASKS = as_tasks([{"name": "formation_energy_per_atom"}])


@pytest.mark.parametrize(("n", "world"), [(103, 1), (103, 2), (100, 3)])
def test_each_epoch_gives_the_ranks_disjoint_equal_shares_of_a_new_permutation(n, world):
    shares = [epoch_order(n, seed=0, epoch=4, rank=r, world=world) for r in range(world)]
    taken = np.concatenate(shares)
    assert {len(s) for s in shares} == {n // world}
    assert len(np.unique(taken)) == len(taken) and n - len(taken) < world and taken.max() < n
    assert np.array_equal(shares[0], epoch_order(n, seed=0, epoch=4, rank=0, world=world))  # again after a resume
    next_epoch = epoch_order(n, seed=0, epoch=5, rank=0, world=world)
    assert not np.array_equal(shares[0], next_epoch) and not np.array_equal(shares[0], np.sort(shares[0]))
    assert not np.array_equal(shares[0], epoch_order(n, seed=1, epoch=4, rank=0, world=world))


def test_batches_from_memory_are_the_rows_in_the_given_order():
    rows = demo_rows(10)
    split = SplitInMemory(graph_table(rows))
    order = np.array([7, 2, 9, 0, 4, 1, 3])
    full = list(split.batches(order, batch_size=3, drop_last=True))
    assert [t.column("id").to_pylist() for t in full] == [[rows[i]["id"] for i in order[k : k + 3]] for k in (0, 3)]
    assert [t.num_rows for t in split.batches(order, 3, drop_last=False)] == [3, 3, 1]
    collated = split.collated(Batching(crystals=4), tasks=TASKS, device="cpu")
    assert [b.n_crystals for b in collated] == [4, 4, 2]
    whole = collate_arrow(split.table, TASKS)
    assert [i for b in collated for i in b.ids] == whole.ids
    assert np.array_equal(np.concatenate([b.edge_dist.numpy() for b in collated]), whole.edge_dist.numpy())
    shares = [split.collated(Batching(crystals=4), TASKS, "cpu", rank, world=2) for rank in (0, 1)]
    assert [[i for b in share for i in b.ids] for share in shares] == [
        collated[0].ids + collated[2].ids,
        collated[1].ids,
    ]
    assert SplitInMemory(pa.table({})).collated(Batching(crystals=4), TASKS, "cpu") == []
    packed = split.collated(Batching(atoms=40), tasks=TASKS, device="cpu")
    assert [i for b in packed for i in b.ids] == whole.ids
    assert all(b.atomic_numbers.numel() <= 40 or b.n_crystals == 1 for b in packed)
    orbits = split.collated(Batching(crystals=4), TASKS, "cpu", orbit_rounds=3)  # what orbit_batches: true gives
    assert [b.ids for b in orbits] == [b.ids for b in collated]
    assert [b.atom_weights.sum().item() for b in orbits] == [b.atomic_numbers.numel() for b in collated]
    assert sum(b.atomic_numbers.numel() for b in orbits) < sum(b.atomic_numbers.numel() for b in collated)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_packed_epochs_give_every_rank_the_same_number_of_steps(world):
    """A rank with one step more than the others would hang in an all-reduce they never join."""
    split = SplitInMemory(graph_table(demo_rows(60)))
    batching = Batching(atoms=48)
    for epoch in (1, 2):
        shares = [list(split.epoch_batches(0, epoch, r, world, batching)) for r in range(world)]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) > 1
        for rank, share in enumerate(shares):
            order = epoch_order(len(split), 0, epoch, rank, world)
            ids = [i for t in share for i in t.column("id").to_pylist()]
            assert ids == split.table.column("id").take(order[: len(ids)]).to_pylist()  # the share's prefix, in order
            assert all(atom_counts(t).sum() <= 48 or t.num_rows == 1 for t in share)
        taken = [i for s in shares for t in s for i in t.column("id").to_pylist()]
        assert len(set(taken)) == len(taken)  # disjoint across ranks
    by_count = list(split.epoch_batches(0, 1, 0, world, Batching(crystals=7)))
    assert {t.num_rows for t in by_count} == {7} and len(by_count) == 60 // world // 7


def test_checkpoints_fall_after_the_first_epoch_then_every_interval_and_at_the_end():
    clock = CheckpointClock(every_s=60)
    assert clock.due(finished=False, now=5.0)  # the first epoch of a session
    clock.mark(5.0)
    assert not clock.due(finished=False, now=64.0)
    assert clock.due(finished=True, now=6.0)
    assert clock.due(finished=False, now=65.0)
    every_epoch = CheckpointClock(every_s=0)
    every_epoch.mark(1.0)
    assert every_epoch.due(finished=False, now=1.0)


def test_epoch_metrics_reach_mlflow_at_the_flush(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: no database to create (seconds)
    uri = (tmp_path / "mlruns").as_uri()
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("epochs")).info.run_id
    logger = RunLogger(uri, run_id)
    logger.add_epoch({"train_loss": 0.5, "val_score": float("nan")}, step=1)
    logger.add_epoch({"train_loss": 0.4, "val_score": 0.9}, step=2)
    assert client.get_metric_history(run_id, "train_loss") == []
    logger.flush()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(1, 0.5), (2, 0.4)]
    assert [m.step for m in client.get_metric_history(run_id, "val_score")] == [2]  # not finite: left out
    logger.flush()  # nothing pending: nothing logged twice
    assert len(client.get_metric_history(run_id, "train_loss")) == 2


@pytest.mark.parametrize(("n_batches", "world"), [(7, 3), (4, 2), (1, 2), (5, 1)])
def test_shared_out_batches_come_back_in_batch_order(n_batches, world):
    """Rank r evaluates ``batches[r::world]``; rank 0 puts the shares back in the split's order."""
    batches = [
        Predicted([f"b{k}"], np.full((1, 1), k), np.zeros((1, 1)), np.ones((1, 1), bool)) for k in range(n_batches)
    ]
    shares = [batches[rank::world] for rank in range(world)]
    assert [p.ids for p in in_batch_order(shares)] == [[f"b{k}"] for k in range(n_batches)]
