"""The per-worker loop under DDP: every rank takes rank 0's decisions, so replicas never drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.train import UserCallback

from mtc.config import TrainConfig, load_config
from mtc.data.batching import collate_arrow
from mtc.train.datasets import read_split
from mtc.train.evaluate import evaluate
from mtc.train.trainer import TrainResult, train

pytestmark = pytest.mark.ray


class RankRecorder(UserCallback):
    """Appends every rank's ``lr``, ``weight_norm`` and ``loss_weight/*`` of each epoch report to a JSONL file (the
    callback runs in Ray Train's controller, not in this process)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if "epoch" in metrics[0]:
            kept = [
                {k: v for k, v in m.items() if k in ("epoch", "lr", "weight_norm") or "loss_weight/" in k}
                for m in metrics
            ]
            with open(self.path, "a") as f:
                f.write(json.dumps(kept) + "\n")


def ranks_of_each_epoch(config: TrainConfig, shards: Path, record: Path) -> tuple[list[list[dict]], TrainResult]:
    result = train(shards, config, ray_callbacks=[RankRecorder(record)])
    return [json.loads(line) for line in record.read_text().splitlines()], result


def test_ranks_stay_identical_with_plateau_pcgrad_and_dwa(demo_shards, ray_session, tmp_path):
    """Two DDP ranks, three epochs, one run for every rank-0-or-all-ranks decision (one run: CI time):

    * #10.2: the plateau schedule steps on rank 0's broadcast score (ranks other than 0 used to step on their own
      never-improving score, and their learning rate dropped alone);
    * PCGrad averages the task gradients itself (DDP's hooks bypassed), DWA learns its weights from the all-ranks
      epoch losses: after every epoch both ranks hold the same weights and the same task weights;
    * the ranks share out the validation batches: the best epoch's score is the one a single process gets from the
      saved model on the whole validation split (each rank predicting with rank 0's BatchNorm statistics);
    * ``compile: true`` (torch.compile'd convolutions) under DDP and PCGrad's per-task backward passes, its model
      saved and loaded uncompiled.
    """
    overrides = [
        "epochs=3",
        "scaling.workers=2",
        "optim.scheduler=plateau",
        "optim.plateau_patience=0",
        "loss.strategy=dwa",
        "loss.gradient_surgery=pcgrad",
        "model.shared_convs=1",
        "model.groups=[[formation_energy_per_atom, band_gap], [is_metal]]",
        "compile=true",
        "experiment=ddp",
    ]
    config = load_config(TrainConfig, "configs/tiny.yaml", overrides)
    epochs, result = ranks_of_each_epoch(config, demo_shards, tmp_path / "r")
    assert len(epochs) == 3
    for ranks in epochs:
        assert len(ranks) == 2 and ranks[0].keys() == ranks[1].keys()
        assert ranks[0]["lr"] == ranks[1]["lr"], ranks
        assert ranks[0]["weight_norm"] == pytest.approx(ranks[1]["weight_norm"], rel=1e-6), ranks
        weights = [{k: v for k, v in rank.items() if k.startswith("loss_weight/")} for rank in ranks]
        assert len(weights[0]) == 3 and weights[0] == pytest.approx(weights[1], rel=1e-6), ranks
        assert sum(weights[0].values()) == pytest.approx(3.0)
    first, third = ({k: v for k, v in epochs[e][0].items() if k.startswith("loss_weight/")} for e in (0, 2))
    assert set(first.values()) == {1.0} and set(third.values()) != {1.0}  # DWA weighs from the third epoch on
    val = [collate_arrow(table, config.tasks) for table in read_split(demo_shards, config, "val")]
    one_process = evaluate(result.bundle.build(), val, config.tasks, result.bundle.mean, result.bundle.std)
    assert one_process.score == pytest.approx(result.metrics["best_val_score"], rel=1e-5)


def test_a_spent_time_budget_ends_every_rank_after_the_epoch_in_hand(demo_shards, ray_session, tmp_path):
    """``budget_minutes``: rank 0 plans the epochs that fit and every rank takes its plan. A budget spent before the
    first epoch ends leaves that epoch alone on both ranks (a rank that missed the plan would start a second epoch
    and wait in its collectives forever), and the run still tests and logs its model."""
    import mlflow

    from mtc import tracking

    overrides = ["epochs=3", "budget_minutes=0.001", "scaling.workers=2", "experiment=budget"]
    config = load_config(TrainConfig, "configs/tiny.yaml", overrides)
    epochs, result = ranks_of_each_epoch(config, demo_shards, tmp_path / "r")
    assert [[rank["epoch"] for rank in ranks] for ranks in epochs] == [[1, 1]]
    assert result.metrics["best_epoch"] == 1 and "test/formation_energy_per_atom/mae" in result.metrics
    planned = mlflow.MlflowClient(tracking.tracking_uri()).get_metric_history(result.run_id, "planned_epochs")
    assert [m.value for m in planned] == [1]
