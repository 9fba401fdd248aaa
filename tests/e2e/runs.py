"""What the CLI tests read back from MLflow: a parent run by its name tag, its child runs, its artifacts."""

from __future__ import annotations

from pathlib import Path

import mlflow

from mtc import tracking


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking.tracking_uri())


def parent_run(kind: str, name: str):
    """The one parent run of the tune or experiment ``name`` (``kind``: ``tune`` or ``experiment``)."""
    runs = client().search_runs([tracking.experiment_id("mtc")], f"tags.`mtc.{kind}.name` = '{name}'")
    assert len(runs) == 1
    return runs[0]


def child_runs(parent_id: str) -> list:
    return client().search_runs([tracking.experiment_id("mtc")], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def last_logged(run_id: str, metric: str) -> int:
    """When the run last logged ``metric`` (ms since the epoch, as MLflow's run times)."""
    return max(m.timestamp for m in client().get_metric_history(run_id, metric))


def artifacts(run_id: str, path: str = "") -> set[str]:
    found = set()
    for a in client().list_artifacts(run_id, path):
        found |= artifacts(run_id, a.path) if a.is_dir else {a.path}
    return found


def download(run_id: str, path: str, folder: Path) -> Path:
    """Artifact folder ``path`` of the run, downloaded under ``folder``."""
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, tracking_uri=tracking.tracking_uri(), dst_path=str(folder)
        )
    )
