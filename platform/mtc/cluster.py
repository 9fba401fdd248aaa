"""Connecting to Ray: a running cluster (``--address`` / ``RAY_ADDRESS``) or an embedded local one; and whether a
small job is better run without Ray at all (``choose_engine``)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

# Quiet, offline-friendly defaults; a user's own environment wins.
_RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_V2_ENABLED": "1",
    # How often the Train controller polls its workers. A worker's ``ray.train.report`` blocks until the previous
    # report was polled (a queue of one), so Ray's 2 s default made every epoch shorter than 2 s last 2 s.
    # Ray Train propagates it from the driver to the controller, on a cluster too.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


ENGINES = ("auto", "ray", "local")
# Rows below which ``auto`` runs a job in this process. Starting Ray (its daemons, then workers that import torch)
# costs seconds of CPU before the first row (benchmarks/bench_fixed_costs.py; benchmarks/RESULTS.md, "Fixed costs"),
# while one process featurizes about 4,700 structures/s end to end: a job of these sizes loses at most the few
# seconds Ray would have saved.
LOCAL_ROWS = {"featurize": 25_000, "screen": 5_000}
# Cores up to which ``auto`` runs every size here: on 2 cores one process beats a Ray the command starts (all 36,737
# mp36k crystals: ``mtc screen`` 12.8 s locally vs 18.8 s on Ray; ``mtc featurize`` 8.1 s vs 10.6 s, though a warm Ray
# featurizes 1.46x as fast as one process), where Ray only pays once one process is the bottleneck of many cores.
LOCAL_CORES = 2


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``; None for none."""
    return address or os.environ.get("RAY_ADDRESS") or None


def ray_running() -> bool:
    """Whether this process has started or joined Ray already (known without importing Ray)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def choose_engine(engine: str, job: str, n_rows: int, address: str | None, running: bool, cores: int) -> str:
    """Where a ``job`` (a key of ``LOCAL_ROWS``) of ``n_rows`` input rows runs: ``"ray"`` or ``"local"`` (this
    process, no Ray).

    ``auto`` runs locally only when nothing asks for Ray: no cluster ``address`` (the caller's, or
    ``$RAY_ADDRESS``), no Ray ``running`` in this process already (a notebook that joined a cluster means it), and
    fewer rows than ``LOCAL_ROWS[job]`` or at most ``LOCAL_CORES`` ``cores`` here.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if address or running:
        return "ray"
    return "local" if n_rows < LOCAL_ROWS[job] or cores <= LOCAL_CORES else "ray"


def local_cores() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Engine:
    """Where a job runs: ``kind`` ``ray`` (the cluster at ``address`` or ``$RAY_ADDRESS``, else Ray started here),
    ``local`` (this process, no Ray) or ``auto`` (``choose_engine``). ``on_start(engine, description)`` hears the
    choice once it is made (the CLI prints it, and on Ray checks that every node sees its paths)."""

    kind: str = "auto"
    address: str | None = None
    on_start: Callable[[str, str], None] | None = None

    def start(self, job: str, n_rows: int) -> str:
        """Choose for a ``job`` of ``n_rows`` input rows, connecting to Ray if it wins; returns ``"ray"`` or
        ``"local"``."""
        cores = local_cores()
        engine = choose_engine(self.kind, job, n_rows, cluster_address(self.address), ray_running(), cores)
        if engine == "ray":
            description = connect(self.address)
        elif self.kind == "local":
            description = "local: this process, no Ray (--engine local)"
        else:
            why = f"under {LOCAL_ROWS[job]:,} rows" if n_rows < LOCAL_ROWS[job] else f"{cores} cores"
            description = f"local: this process, no Ray (auto: {why}; --engine ray for Ray)"
        if self.on_start:
            self.on_start(engine, description)
        return engine


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once per process and return a description of where it runs.

    Args:
        address: a cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); None uses
            ``RAY_ADDRESS`` when set, else starts Ray inside this process.
        num_cpus: CPUs of the embedded instance (default: all cores).

    Where this process runs Ray already, the placement groups its dead Ray Train runs left are freed first
    (``release_orphan_placement_groups``).
    """
    for key, value in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data._internal.execution.streaming_executor", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        # A long-lived process (a notebook, a driver running several jobs, a test session): the CPUs a dead training
        # of this process still reserves would starve the Ray Data stages of the job about to start.
        release_orphan_placement_groups()
    else:
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


# Ray versions whose GCS placement-group table layout ``release_orphan_placement_groups`` has been checked against.
_PG_TABLE_CHECKED = ((2, 51), (2, 70))


def ray_version() -> tuple[int, int]:
    """The installed Ray's (major, minor), for the few places that depend on it."""
    import ray

    return tuple(int(p) for p in ray.__version__.split(".")[:2])


def release_orphan_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; returns how many were removed.

    Ray Train's own cleaner needs the dashboard's state API, which an embedded Ray without a dashboard lacks;
    a Train run that died with its Tune trial would keep its CPUs reserved until the driver exits. The GCS table
    is the only place that names a placement group's creator without the dashboard, and it is a private Ray API:
    used only on the Ray versions it was checked against, with a log line when it is off.
    """
    import ray
    from ray.util.client import ray as client_ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    version = ray_version()
    if client_ray.is_connected():
        _log_release_off("a Ray Client connection")
        return 0
    if not _PG_TABLE_CHECKED[0] <= version < _PG_TABLE_CHECKED[1]:
        _log_release_off(f"Ray {ray.__version__}")
        return 0
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    table = [
        gcs_pb2.PlacementGroupTableData.FromString(raw)
        for raw in state._connect_and_get_accessor().get_placement_group_table()
    ]
    job, removed = ray.get_runtime_context().get_job_id(), 0
    for pg in table:
        by_actor = pg.creator_actor_id != b"\xff" * len(pg.creator_actor_id)
        if (
            by_actor
            and pg.creator_actor_dead
            and not pg.is_detached
            and pg.creator_job_id.hex() == job
            and pg.state != gcs_pb2.PlacementGroupTableData.REMOVED
        ):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


@functools.cache
def _log_release_off(why: str) -> None:
    logging.getLogger(__name__).warning(
        "mtc: freeing the CPUs of dead Ray Train runs (early-stopped tune trials, crashed trainings) is off on %s "
        "(checked on Ray %d.%d up to %d.%d); "
        "Ray Train's own cleaner, which needs the Ray dashboard, has to do it",
        why,
        *_PG_TABLE_CHECKED[0],
        *_PG_TABLE_CHECKED[1],
    )
