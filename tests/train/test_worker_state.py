"""What a worker builds and what survives its restart, without Ray: the model of a config, the typed state."""

from __future__ import annotations

import math

import pytest
import torch

from mtc.config import TrainConfig, load_config
from mtc.train.loop import WorkerConfig, build
from mtc.train.optim import planned_epochs


def worker_config(radius: float, overrides: list[str] = ()) -> WorkerConfig:
    train = load_config(TrainConfig, "configs/tiny.yaml", list(overrides))
    return WorkerConfig(
        train=train,
        mean=[0.0] * len(train.tasks),
        std=[1.0] * len(train.tasks),
        graph_params={"radius": radius, "max_neighbors": 12, "max_atoms": 1000, "min_distance": 0.5},
        run_id="r",
        tracking_uri="sqlite:///unused.db",
        threads=1,
    )


def test_the_gaussian_expansion_spans_the_shards_radius():
    """#10.10: with --radius 10 the expansion stopped at 8 Å and every longer edge looked alike (all zeros)."""
    model, _ = build(worker_config(10.0))
    centres = model.trunks[0].expansion.centres
    assert math.isclose(float(centres[-1]), 10.0, abs_tol=1e-5) and centres.numel() == 51
    features = model.trunks[0].expansion(torch.tensor([9.0, 9.6]))
    assert features.abs().sum(dim=1).min() > 0.5 and not torch.allclose(features[0], features[1])
    assert model.config()["dmax"] == 10.0  # the saved bundle rebuilds the same expansion


def test_train_state_round_trips_through_a_checkpoint(tmp_path):
    _, state = build(worker_config(8.0, ["optim.scheduler=plateau"]))
    model = state.objective.model
    for p in model.parameters():
        p.data.add_(0.5)
    assert not state.observe(1, 0.9, 0.7, model, patience=2)
    assert not state.observe(2, 0.8, 0.8, model, patience=2)  # not better: one bad epoch
    state.finished = True
    state.plan.epochs = 7  # a time budget planned 7 of the config's epochs
    state.save(tmp_path)

    _, fresh = build(worker_config(8.0, ["optim.scheduler=plateau"]))
    fresh.restore(tmp_path)
    assert (fresh.epoch, fresh.best_epoch, fresh.best_score, fresh.bad_epochs, fresh.finished) == (2, 1, 0.7, 1, True)
    assert fresh.plan.epochs == 7
    assert [h["val_score"] for h in fresh.history] == [0.7, 0.8]
    for (name, a), b in zip(model.state_dict().items(), fresh.objective.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(fresh.best_weights[k], v) for k, v in state.best_weights.items())


def test_a_nan_score_never_improves_but_the_first_weights_are_kept():
    _, state = build(worker_config(8.0))
    stop = state.observe(1, 1.0, float("nan"), state.objective.model, patience=1)
    assert stop and state.best_weights is not None and state.best_epoch == -1


def test_a_time_budget_plans_the_epochs_that_fit_and_the_schedule_spans_them():
    # 100 s left at 20 s an epoch after 3 epochs: an epoch's time is kept for the final test, 4 more fit
    assert planned_epochs(3, 50, 20.0, 100.0) == 7
    assert planned_epochs(3, 50, 5.0, 100.0) == 3 + 17  # short epochs: FINAL_SECONDS (15 s) kept, not 5 s
    assert planned_epochs(3, 5, 20.0, 100.0) == 5  # never past the config's epochs
    assert planned_epochs(3, 50, 20.0, 39.0) == 3  # less than two epochs left: the run ends now
    assert planned_epochs(3, 50, 20.0, -5.0) == 3  # the deadline has passed
    _, state = build(worker_config(8.0, ["epochs=10", "optim.lr=1.0", "optim.scheduler=cosine"]))
    lrs = []
    for epoch in range(4):
        lrs.append(state.optimizer.param_groups[0]["lr"])
        if epoch == 1:
            state.plan.epochs = 4  # planned after the second epoch: the cosine ends at epoch 4, not 10
        state.scheduler.step()
    assert lrs == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 10)), 0.5, 0.5 * (1 + math.cos(0.75 * math.pi))])
