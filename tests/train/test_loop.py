"""The per-worker loop under DDP: every rank takes rank 0's decisions, so replicas never drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.train import UserCallback

from mtc.config import TrainConfig, load_config
from mtc.train.trainer import train

pytestmark = pytest.mark.ray


class RankRecorder(UserCallback):
    """Appends every rank's ``lr`` and ``weight_norm`` of each epoch report to a JSONL file (the callback runs in
    Ray Train's controller, not in this process)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if "epoch" in metrics[0]:
            with open(self.path, "a") as f:
                f.write(json.dumps([{k: m[k] for k in ("epoch", "lr", "weight_norm")} for m in metrics]) + "\n")


def test_plateau_schedule_keeps_ranks_identical(demo_shards, ray_session, tmp_path):
    """#10.2: ranks other than 0 used to step the plateau schedule on their own never-improving score."""
    config = load_config(
        TrainConfig,
        "configs/tiny.yaml",
        ["epochs=3", "scaling.workers=2", "optim.scheduler=plateau", "optim.plateau_patience=0", "experiment=ddp"],
    )
    record = tmp_path / "ranks.jsonl"
    train(demo_shards, config, ray_callbacks=[RankRecorder(record)])
    epochs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(epochs) == 3
    for ranks in epochs:
        assert len(ranks) == 2
        assert ranks[0]["lr"] == ranks[1]["lr"], ranks
        assert ranks[0]["weight_norm"] == pytest.approx(ranks[1]["weight_norm"], rel=1e-6), ranks
