"""A real multi-node Ray cluster on this machine: `ray start` nodes on loopback, for tests and benchmarks.

Each node is a `ray start --block` process in its own session (own ports, one temp dir for the cluster), so the
caller's own Ray is untouched and a node can be killed as a host that loses power: SIGKILL to every process of
its session. A node may run in a private mount namespace where one folder is covered by an empty tmpfs: a path
that the driver and the other nodes see and that node does not, as on two hosts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240  # a head starts in ≈ 15-25 s; beside a training on 2 slow cores, 90 s were once not enough


class ClusterError(RuntimeError):
    """A node did not start or exited; the message names the log folder."""


def free_ports(n: int) -> list[int]:
    """n loopback TCP ports free right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _node_ports() -> list[str]:
    listen, grpc, metrics, runtime_env = free_ports(4)
    return [
        f"--dashboard-agent-listen-port={listen}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
    ]


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def kill_session(proc: subprocess.Popen, *, graceful: bool = True) -> None:
    """End a process started with start_new_session and every process of its session."""
    if graceful:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    for pid in _session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class LocalRayCluster:
    """A head node and worker nodes on 127.0.0.1; ``env`` points `ray`, `mtc` and Ray Jobs at it."""

    def __init__(self, root: Path):
        self.root = root
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ADDRESS": self.address,
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }  # a job's `python` is the nodes' environment
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.procs: list[subprocess.Popen] = []
        self.killed: set[int] = set()

    def start(self, head_cpus: float = 1) -> LocalRayCluster:
        """Start the head node (with the dashboard, which Ray Jobs need)."""
        self._spawn(
            [
                *self._common(head_cpus),
                "--head",
                f"--port={self.gcs_port}",
                f"--temp-dir={self.root / 'ray'}",
                f"--ray-client-server-port={self.client_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ],
            "head",
        )
        self.wait_nodes(1)
        return self

    def add_node(self, cpus: float = 1, *, hide: Path | None = None) -> int:
        """Start a worker node and wait for it; returns its index for ``kill_node``.

        ``hide``: a folder this node cannot see (needs root and `unshare`); raises ClusterError if impossible.
        """
        cmd = [*self._common(cpus), f"--address={self.address}"]
        if hide is not None:
            if not self.can_hide():
                raise ClusterError("hiding a folder from a node needs root and unshare")
            script = f'mount -t tmpfs tmpfs "{hide}" && exec "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
        index = len(self.procs)
        self._spawn(cmd, f"node{index}")
        self.wait_nodes(self.alive())
        return index

    @staticmethod
    def can_hide() -> bool:
        return os.geteuid() == 0 and shutil.which("unshare") is not None

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of node ``index`` (raylet, workers, agents): the host is gone."""
        self.killed.add(index)
        kill_session(self.procs[index], graceful=False)

    def alive(self) -> int:
        return sum(proc.poll() is None for proc in self.procs)

    def _common(self, cpus: float) -> list[str]:
        return [
            str(BIN / "ray"),
            "start",
            f"--num-cpus={cpus:g}",
            f"--object-store-memory={300 * 1024**2}",
            "--block",
            *_node_ports(),
        ]

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the node)
        self.procs.append(
            subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def active_nodes(self) -> int:
        status = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True
        )
        active = status.stdout.split("Active:")[-1].split("Pending:")[0]
        return active.count("node_") if status.returncode == 0 else 0

    def wait_nodes(self, n: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the cluster has exactly n active nodes; a node process that exits ends the wait."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for i, p in enumerate(self.procs) if i not in self.killed):
                raise ClusterError(f"a Ray node exited; logs in {self.root}")
            if self.active_nodes() == n:
                return
            time.sleep(1)
        raise ClusterError(f"the cluster did not reach {n} active node(s) in {timeout_s:g} s; logs in {self.root}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            kill_session(proc)

    def run(self, args: list[str], *, timeout: float = 240, env: dict[str, str] | None = None):
        """A command (`mtc ...`, `ray job submit ...`) with this cluster as RAY_ADDRESS, from the repository root."""
        return subprocess.run(
            args,
            env={**self.env, **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def mtc(self, *args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.run([str(BIN / "mtc"), *args, "--address", self.address], timeout=timeout, env=env)

    def submit_job(self, *entrypoint: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`ray job submit` of ``entrypoint`` from the repository root, with jobs/runtime_env.yaml, waiting for it."""
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--",
            *entrypoint,
        ]
        for _ in range(3):  # the job agent of a fresh head may not be ready yet
            result = self.run(submit, timeout=timeout)
            if "No available agent" not in result.stderr:
                break
            time.sleep(5)
        return result
