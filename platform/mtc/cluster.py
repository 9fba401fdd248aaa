"""Connecting to Ray: a running cluster (``--address`` / ``RAY_ADDRESS``) or an embedded local one."""

from __future__ import annotations

import logging
import os

# Quiet, offline-friendly defaults; a user's own environment wins.
_RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
}


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once per process and return a description of where it runs.

    Args:
        address: a cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); None uses
            ``RAY_ADDRESS`` when set, else starts Ray inside this process.
        num_cpus: CPUs of the embedded instance (default: all cores).
    """
    for key, value in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            # "local": never join some other Ray instance that happens to run on this machine
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    resources = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    gpus = int(resources.get("GPU", 0))
    return f"Ray: {nodes} node(s), {int(resources.get('CPU', 0))} CPUs" + (f", {gpus} GPUs" if gpus else "")
