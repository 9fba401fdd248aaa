"""``mtc ui``: the MLflow UI on the store the jobs use."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from mtc_cli.common import console


def ui(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the UI to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Open the MLflow UI on mtc's runs and models (the embedded store, or MLFLOW_TRACKING_URI's server)."""
    from mtc import tracking

    uri = tracking.tracking_uri()
    if not tracking.is_embedded(uri):
        console.print(f"runs are on the MLflow server {uri}: open it in a browser")
        raise typer.Exit(0)
    console.print(f"MLflow UI on {uri}: http://{host}:{port}  (Ctrl-C stops it)")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        tracking.artifact_root().as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    os.execvp(command[0], command)
