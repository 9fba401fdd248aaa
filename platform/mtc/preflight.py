"""Checks before work on a cluster: every node must see the local folders a command reads and writes, and which
nodes would emulate bfloat16.

On one machine every path is shared. On several nodes, a local path (``/data/shards``, ``file://...``,
the embedded ``sqlite:///...`` store) names a different disk on each node unless it is a shared mount, and
the failure shows up late and obscure (a worker's FileNotFoundError, checkpoints that vanish). The MLflow
server half of the pre-flight is ``mtc.tracking.configure()``, which fails fast when an http URI does not answer.
"""

from __future__ import annotations

import os
import platform
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mtc.errors import MtcError

MARKER_PREFIX = ".mtc-preflight-"
NODE_TIMEOUT_S = 60.0


class SharedPathError(MtcError):
    """A node of the Ray cluster cannot see a path the command needs."""


def local_path(location: str | Path) -> Path | None:
    """The filesystem path of a location: a plain path, ``file://`` or ``sqlite:///`` URI; None for remote storage."""
    text = str(location)
    if text.startswith("sqlite:///"):
        return Path(text.removeprefix("sqlite:///")).parent if text != "sqlite:///:memory:" else None
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # s3://, gs://, http://, postgresql://...; not C:\
        return None
    return Path(text)


def needs_check() -> bool:
    """True when the driver's files may not be the workers' files: several alive nodes, or a Ray Client driver."""
    import ray
    from ray.util.client import ray as client_ray

    return client_ray.is_connected() or sum(1 for n in ray.nodes() if n.get("Alive")) > 1


def check_shared_paths(paths: Mapping[str, str | Path | None]) -> None:
    """Fail unless every alive Ray node sees each local path as this driver does.

    Args:
        paths: what each location is (an option or variable name, for the message) -> a path or URI. None and
            remote URIs (s3://, gs://, http://...) are skipped.

    The driver writes a marker holding a random token into each path's folder (the path itself, a file's parent,
    or the nearest existing folder above a path still to be created), then one task pinned to each node reads the
    markers back. A folder the driver cannot write to (a read-only input) is only checked for existence on every
    node. Nothing is created, and nothing is checked on a single-node cluster.
    """
    folders = {label: _folder(path) for label, path in paths.items() if path is not None}
    folders = {label: folder for label, folder in folders.items() if folder is not None}
    if not folders or not needs_check():
        return
    token = secrets.token_hex(8)
    expected: dict[str, tuple[str, str | None]] = {}
    written: list[Path] = []
    try:
        for label, folder in folders.items():
            marker = folder / f"{MARKER_PREFIX}{token}"
            try:
                marker.write_text(token)
            except OSError:
                expected[label] = (str(folder), None)
                continue
            written.append(marker)
            expected[label] = (str(marker), token)
        problems = []
        for where, seen in _on_each_node(_probe, {label: path for label, (path, _) in expected.items()}):
            if seen is None:
                problems.append(f"{where} did not answer within {NODE_TIMEOUT_S:g} s")
                continue
            problems += [
                f"{where} cannot see {label} {paths[label]}"
                for label, (_, want) in expected.items()
                if seen[label] is None or (want is not None and seen[label] != want)
            ]
    finally:
        for marker in written:
            marker.unlink(missing_ok=True)
    if problems:
        raise SharedPathError(
            "; ".join(problems) + ". Every node must see these paths: put shards and screen folders on a folder "
            "every node mounts at the same path (NFS, a shared volume), checkpoints on s3 (MTC_STORAGE=s3://bucket/"
            "prefix) or that mount, and runs on an MLflow server (MLFLOW_TRACKING_URI=http://...)"
        )


def _on_each_node(fn: Callable[..., Any], *args: Any) -> list[tuple[str, Any]]:
    """``fn(*args)`` run once on every alive Ray node: (the node, its answer or None if it gave none in time)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
        for n in nodes
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=NODE_TIMEOUT_S)
    answers = []
    for node, ref in zip(nodes, refs, strict=True):
        if ref not in ready:
            ray.cancel(ref, force=True)
        answers.append(
            (f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})", ray.get(ref) if ref in ready else None)
        )
    return answers


def _folder(location: str | Path) -> Path | None:
    path = local_path(location)
    if path is None:
        return None
    path = path.expanduser().resolve()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _probe(paths: dict[str, str]) -> dict[str, str | None]:
    """On one node: each marker's text ('' for an existing folder), None when the node cannot see it."""
    seen: dict[str, str | None] = {}
    for label, path in paths.items():
        try:
            seen[label] = Path(path).read_text() if os.path.isfile(path) else ("" if os.path.isdir(path) else None)
        except OSError:
            seen[label] = None
    return seen


def cpu_has_bfloat16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bfloat16 is emulated on the
    CPU and runs slower than float32. True when torch cannot tell (its probes cover x86 CPUs only)."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if probe is not None]
    return not probes or any(probe() for probe in probes)


def cpus_without_bfloat16() -> list[str]:
    """Where bfloat16 on CPUs would be emulated: each Ray node without bfloat16 instructions when the workers may run
    on other machines (several nodes, a Ray Client driver), else ``["this machine"]`` or ``[]``."""
    import ray

    if ray.is_initialized() and needs_check():
        return [where for where, has in _on_each_node(cpu_has_bfloat16) if has is False]
    return [] if cpu_has_bfloat16() else ["this machine"]


def check_training_paths(data: str | Path) -> None:
    """What every node of a training (or tune) run reads or writes: the shards, checkpoints, the MLflow store."""
    from mtc.tracking import checkpoint_root, tracking_uri

    check_shared_paths({"--data": data, "MTC_STORAGE": checkpoint_root(), "the MLflow store": tracking_uri()})
