"""Shared fixtures: real mp36k crystals from the bundled demo slice, and one Ray instance per test run."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "mp_demo.jsonl.gz"


def _read_demo() -> list[dict]:
    with gzip.open(DEMO, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def demo_records() -> list[dict]:
    """The 4,000 real Materials Project crystals of the demo slice (mp36k layout)."""
    return _read_demo()


def checkpoint_registered(storage: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of a run stored under ``storage``: its controller writes this
    snapshot right after it registers one, and a restarted or resumed run starts from what the snapshot names."""
    return any(storage.glob("mtc-*/checkpoint_manager_snapshot.json"))


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test run (2 CPUs, small object store)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from mtc.cluster import connect

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
            logging_level="WARNING",
        )
    connect()
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Rows as a JSONL (or JSONL.gz, by suffix) file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session", autouse=True)
def mtc_home(tmp_path_factory):
    """An MLflow store and checkpoint folder private to this test run."""
    home = tmp_path_factory.mktemp("mtc-home")
    os.environ["MTC_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return home


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, demo_records, ray_session) -> Path:
    """Graph shards of 2,000 real crystals with the three MT-CGCNN labels, featurized once per test run."""
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize

    folder = tmp_path_factory.mktemp("shards")
    src = write_jsonl(folder / "mp2000.jsonl.gz", demo_records[:2000])
    featurize(
        src,
        folder / "shards",
        FeaturizeConfig(rows_per_shard=500),
        labels=["formation_energy_per_atom", "band_gap", "efermi"],
    )
    return folder / "shards"


@dataclass
class Trained:
    """A finished training run and its model as registered (``{"model_uri", "name", "version"}``)."""

    run_id: str
    experiment_id: str
    bundle: object
    registered: dict


@pytest.fixture(scope="session")
def trained(demo_shards, ray_session) -> Trained:
    """One tiny model trained through Ray Train and registered as 'mtc-test' (registry and screen tests)."""
    from mtc.config import TrainConfig, load_config
    from mtc.registry.models import publish
    from mtc.train.trainer import train

    config = load_config(TrainConfig, "configs/tiny.yaml", ["epochs=1", "experiment=registry-tests"])
    result = train(demo_shards, config)
    return Trained(
        result.run_id, result.experiment_id, result.bundle, publish(result.run_id, result.bundle, "mtc-test")
    )
