"""Featurize and screen throughput on one Ray node vs two, and the overhead of `ray job submit` over a direct run.

    .venv/bin/python benchmarks/bench_scaleout.py [--n 4000] [--repeats 2] [--data PATH]

Clusters are real `ray start` nodes on this machine (tests/infra/ray_nodes.py), driven through the `mtc` CLI with
`--address`, as a user drives a remote cluster:
  - 1 node x 1 CPU   the unit of scaling;
  - 2 nodes x 1 CPU  the same work spread over two nodes (efficiency = throughput / (2 x one node's));
  - 1 node x 2 CPUs  the same two CPUs in one node: what the second node's overheads cost.
Every node shares this machine's cores, so 2 CPUs is the ceiling. Times are wall clock of the whole command
(connect, plan, read, featurize or score, write), the best of --repeats runs into fresh folders after one warm-up.
Then, on the two-node cluster, `mtc featurize` direct vs `ray job submit ... python jobs/featurize.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_data import add_data_option  # noqa: E402
from bench_screen import structures_parquet, train_small_model  # noqa: E402

from tests.infra.ray_nodes import LocalRayCluster  # noqa: E402

LAYOUTS = {"1 node x 1 CPU": [1], "2 nodes x 1 CPU": [1, 1], "1 node x 2 CPUs": [2]}  # CPUs of each node


def best_of(repeats: int, run: Callable[[int], None]) -> float:
    """Fastest wall-clock seconds of ``run(k)`` for k in 0..repeats-1 (run(-1) first, untimed: warm-up)."""
    run(-1)
    times = []
    for k in range(repeats):
        started = time.perf_counter()
        run(k)
        times.append(time.perf_counter() - started)
    return min(times)


def checked(result, what: str) -> None:
    if result.returncode != 0:
        sys.exit(f"{what} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def measure_layout(cpus: list[int], db: Path, model: str, work: Path, repeats: int, jobs: bool) -> dict[str, float]:
    """Seconds for featurize and screen on a fresh cluster with one node per entry of ``cpus`` (+ the job overhead)."""
    root = Path(tempfile.mkdtemp(prefix="mtcb-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = LocalRayCluster(root)
    try:
        cluster.start(head_cpus=cpus[0])
        for n in cpus[1:]:
            cluster.add_node(n)
        tag = "-".join(map(str, cpus))

        def featurize(k: int) -> None:
            out = work / f"shards-{tag}-{k}"
            checked(cluster.mtc("featurize", str(db), "--out", str(out), timeout=1800), "featurize")

        def screen(k: int) -> None:
            out = work / f"screen-{tag}-{k}"
            args = ["screen", str(db), "--model", model, "--out", str(out), "--workers", str(sum(cpus))]
            checked(cluster.mtc(*args, timeout=1800), "screen")
            scored = pq.read_table(out / "predictions").num_rows
            assert scored + pq.read_table(out / "rejected").num_rows == pq.read_metadata(db).num_rows

        seconds = {"featurize": best_of(repeats, featurize), "screen": best_of(repeats, screen)}
        if jobs:
            seconds.update(job_overhead(cluster, db, work, repeats))
        return seconds
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def job_overhead(cluster: LocalRayCluster, db: Path, work: Path, repeats: int) -> dict[str, float]:
    """Featurize as a Ray Job (working dir uploaded, runtime env set up) vs the direct command, same cluster."""

    def job(k: int) -> None:
        out = work / f"job-shards-{k}"
        result = cluster.submit_job("python", "jobs/featurize.py", str(db), "--out", str(out), timeout=1800)
        checked(result, "ray job submit")

    def direct(k: int) -> None:
        checked(cluster.mtc("featurize", str(db), "--out", str(work / f"direct-shards-{k}"), timeout=1800), "direct")

    return {"job: direct": best_of(repeats, direct), "job: ray job submit": best_of(repeats, job)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="structures of --data")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is kept)")
    add_data_option(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    os.environ["MTC_HOME"] = str(work / "home")  # the model's store, inherited by every `mtc` command
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")

    from mtc.cluster import connect

    connect()
    model = train_small_model()  # in this process's own embedded Ray, not timed
    import ray

    ray.shutdown()
    db = structures_parquet(args.data, args.n, work / "db.parquet")

    results = {
        name: measure_layout(cpus, db, model, work, args.repeats, jobs=len(cpus) == 2) for name, cpus in LAYOUTS.items()
    }
    one, two = results["1 node x 1 CPU"], results["2 nodes x 1 CPU"]
    print(f"\n{args.n:,} structures of {args.data.name} (Parquet in, Parquet out), `mtc ... --address`")
    print(f"best of {args.repeats} after a warm-up")
    print(f"{'layout':18s} {'featurize/s':>12s} {'screen/s':>10s}")
    for name, seconds in results.items():
        print(f"{name:18s} {args.n / seconds['featurize']:12.0f} {args.n / seconds['screen']:10.0f}")
    for stage in ("featurize", "screen"):
        speedup = one[stage] / two[stage]
        print(f"{stage}: 2 nodes / 1 node = {speedup:.2f}x, scaling efficiency {speedup / 2:.0%}")
    direct, job = two["job: direct"], two["job: ray job submit"]
    print(f"ray job submit: {job:.1f} s vs direct {direct:.1f} s: overhead {job - direct:+.1f} s ({job / direct:.2f}x)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
