"""Where runs and models live: the embedded SQLite store under MTC_HOME, or MLFLOW_TRACKING_URI."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mtc.errors import MtcError


class TrackingError(MtcError):
    """The tracking server cannot be used."""


def mtc_home() -> Path:
    """``$MTC_HOME``, default ``~/.mtc``: the embedded MLflow store and Ray checkpoints live here."""
    return Path(os.environ.get("MTC_HOME", "~/.mtc")).expanduser().resolve()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///$MTC_HOME/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    mtc_home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{mtc_home() / 'mlflow.db'}"


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:")


def artifact_root() -> Path:
    """Artifacts of the embedded store (a server chooses its own)."""
    return mtc_home() / "mlartifacts"


def checkpoint_root() -> str:
    """Ray Train storage: ``$MTC_STORAGE`` (shared storage on a cluster, e.g. s3://...), else under MTC_HOME."""
    return os.environ.get("MTC_STORAGE") or str(mtc_home() / "ray_results")


def configure() -> str:
    """Point mlflow at the store; check that a server answers. Returns the URI."""
    import logging

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:
            raise TrackingError(
                f"the MLflow server at {uri} does not answer ({type(err).__name__}); start it or fix "
                "MLFLOW_TRACKING_URI"
            ) from None
    return uri


# MLflow 3's UI opens an experiment on its GenAI views unless this tag says it holds model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created when missing (embedded store: artifacts under MTC_HOME).

    Every experiment mtc uses carries ``mlflow.experimentKind = custom_model_development``, so the MLflow UI
    shows its runs as model training (runs, metrics, artifacts, models), not GenAI traces.
    """
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        location = (artifact_root() / name).as_uri() if is_embedded(mlflow.get_tracking_uri()) else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.tags.get(EXPERIMENT_KIND[0]) is None:  # made by an older mtc, or by hand
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # a concurrent run may be tagging it too
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id
