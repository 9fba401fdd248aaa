"""Featurize throughput: CGCNN's per-structure pymatgen loop vs mtc's graph builder, alone and on Ray Data.

(a) baseline, re-implemented here after CGCNN's data loader: per crystal, parse the JSON line, build a
    pymatgen ``Structure``, ``get_all_neighbors(8.0, include_index=True)``, sort every atom's list in
    Python by distance, keep the 12 nearest and build padded index/distance lists in Python. Slow, so it
    runs on ``--baseline-n`` crystals spread evenly over the N (small and large cells alike).
(b) mtc in one process: ``featurize_table`` on Arrow batches of 64 rows ``{id, source, json}`` (the Ray Data
    tasks run it on whole blocks). (b0): the same with the graph builder's first, shorter neighbour search
    switched off (one search to 8 Å, the builder before it); its shards must equal (b)'s.
(c) ``mtc featurize`` end to end (scan, Ray Data tasks on all cores writing the shards, manifest) on a
    JSONL.gz of the same N rows. Cold = Ray start + first run; warm = later runs into fresh folders.

(b) is checked against (a) on the baseline subset: same number of neighbours for every atom, the same
kept distances, the same neighbour indices (up to ties at the 12th neighbour).
Run: ``python benchmarks/bench_featurize.py [--n 2000] [--baseline-n 300] [--profile] [--data PATH]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import math
import os
import pstats
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bench_data import RaySampler, add_data_option, first_lines
from pymatgen.core import Lattice, Structure

from mtc.config import FeaturizeConfig
from mtc.data import graph as graph_module
from mtc.data.featurize import featurize_table

RADIUS, MAX_NBR = 8.0, 12
LABELS = ["formation_energy_per_atom", "band_gap", "efermi"]
BATCH = 64


def peak_rss_mib() -> float:
    """Peak RSS of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- (a) baseline


def cgcnn_baseline(line: str) -> tuple[list[list[int]], list[list[float]], list[int]]:
    """One crystal the CGCNN way. Returns padded (n, 12) index and distance lists and the real counts."""
    row = json.loads(line)
    crystal = Structure(Lattice(row["lattice"]), row["species"], row["frac_coords"])
    all_nbrs = crystal.get_all_neighbors(RADIUS, include_index=True)
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
    nbr_fea_idx, nbr_fea, counts = [], [], []
    for nbr in all_nbrs:
        kept = nbr[:MAX_NBR]
        counts.append(len(kept))
        idx = [x[2] for x in kept]
        dist = [x[1] for x in kept]
        pad = MAX_NBR - len(kept)
        nbr_fea_idx.append(idx + [0] * pad)
        nbr_fea.append(dist + [RADIUS + 1.0] * pad)
    return nbr_fea_idx, nbr_fea, counts


def run_baseline(lines: list[str]) -> tuple[float, list]:
    started = time.perf_counter()
    results = []
    for line in lines:
        idx, dist, counts = cgcnn_baseline(line)
        results.append((np.array(idx), np.array(dist), counts))
    return time.perf_counter() - started, results


# ------------------------------------------------------------------------------------- (b) mtc table


def record_table(lines: list[str], path: Path) -> pa.Table:
    """Rows as ``scan_source`` hands them to the pipeline: id, source (file:line), json text."""
    rows = [{"id": json.loads(line)["id"], "source": f"{path}:{k}", "json": line} for k, line in enumerate(lines, 1)]
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("json", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def run_mtc(table: pa.Table, config: FeaturizeConfig) -> tuple[float, pa.Table]:
    started = time.perf_counter()
    parts = [featurize_table(table.slice(i, BATCH), config, LABELS) for i in range(0, table.num_rows, BATCH)]
    return time.perf_counter() - started, pa.concat_tables(parts)


def compare(baseline: list, graphs: pa.Table) -> dict[str, int]:
    """Per crystal: do (a) and (b) give every atom the same neighbour count, distances and indices?"""
    bad = Counter()
    srcs = graphs.column("edge_src").to_pylist()
    dsts = graphs.column("edge_dst").to_pylist()
    dists = graphs.column("edge_dist").to_pylist()
    reasons = graphs.column("reason").to_pylist()
    for k, (idx, dist, counts) in enumerate(baseline):
        if reasons[k] is not None:
            bad["rejected by mtc"] += 1
            continue
        src, dst, d = np.array(srcs[k], int), np.array(dsts[k], int), np.array(dists[k], float)
        mtc_counts = np.bincount(dst, minlength=len(counts))
        if len(mtc_counts) != len(counts) or (mtc_counts != np.array(counts)).any():
            bad["neighbour-count mismatch"] += 1
            continue
        dist_bad = idx_bad = False
        for i, c in enumerate(counts):
            mine = dst == i
            if not np.allclose(np.sort(d[mine]), dist[i, :c], atol=1e-4):
                dist_bad = True
            if sorted(src[mine].tolist()) != sorted(idx[i, :c].tolist()):
                # Only acceptable when the 12th and 13th neighbours tie in distance.
                idx_bad = True
        bad["distance mismatch"] += dist_bad
        bad["index-set difference (ties)"] += idx_bad and not dist_bad
    return bad


# ------------------------------------------------------------------------------------- (c) Ray Data


def run_ray(lines: list[str], tmp: Path, config: FeaturizeConfig, warm_repeats: int) -> dict:
    from mtc.cluster import connect
    from mtc.data.featurize import featurize

    src = tmp / "src.jsonl.gz"
    with gzip.open(src, "wt") as fh:
        fh.writelines(lines)

    sampler = RaySampler()
    sampler.start()
    started = time.perf_counter()
    where = connect()
    ray_start = time.perf_counter() - started

    t0 = time.perf_counter()
    first = featurize(src, tmp / "out-cold", config, labels=LABELS)
    first_run = time.perf_counter() - t0
    assert not first.reused

    warm = []
    for r in range(warm_repeats):
        out = tmp / f"out-warm-{r}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh folder: no shard reuse
        t0 = time.perf_counter()
        summary = featurize(src, out, config, labels=LABELS)
        warm.append(time.perf_counter() - t0)
        assert not summary.reused
    sampler.stop()

    shard_bytes = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    return {
        "where": where,
        "ray_start": ray_start,
        "first_run": first_run,
        "warm": warm,
        "n_read": summary.n_read,
        "n_written": summary.n_written,
        "rejected": summary.rejected_by_reason,
        "shard_bytes": shard_bytes,
        "n_shards": len(list(out.glob("part-*.parquet"))),
        "peak_all": sampler.peak_all / 2**20,
        "peak_workers": sampler.peak_workers / 2**20,
    }


# ------------------------------------------------------------------------------------- main


def profile_mtc(table: pa.Table, config: FeaturizeConfig, top: int = 15) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run_mtc(table, config)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="crystals for (b) and (c)")
    parser.add_argument("--baseline-n", type=int, default=300, help="crystals for (a), spread over the N")
    parser.add_argument("--warm-repeats", type=int, default=2, help="warm (c) runs; the best is reported")
    add_data_option(parser)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of (b), top 15 cumulative")
    parser.add_argument("--skip-ray", action="store_true", help="skip (c)")
    args = parser.parse_args()

    path = args.data
    lines = first_lines(path, args.n)
    n = len(lines)
    step = max(1, n // max(1, args.baseline_n))
    subset = list(range(0, n, step))[: args.baseline_n]
    config = FeaturizeConfig()
    atoms = np.array([len(json.loads(line)["species"]) for line in lines])

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: nproc={os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), python {sys.version.split()[0]}, "
        f"load average at start {os.getloadavg()[0]:.2f} (other processes skew every rate below)"
    )
    print(
        f"data: {path}, first {n} crystals, {atoms.mean():.1f} atoms/crystal (max {atoms.max()}); "
        f"baseline subset: {len(subset)} crystals (every {step}th), {atoms[subset].mean():.1f} atoms/crystal"
    )
    print(f"graph: radius {config.radius} Å, {config.max_neighbors} nearest neighbours, batches of {BATCH}")
    print()

    # (a)
    a_lines = [lines[i] for i in subset]
    a_seconds, a_results = run_baseline(a_lines)
    a_rate = len(subset) / a_seconds
    rss_a = peak_rss_mib()

    # (b): warm the imports on one batch, then time all N; also the same subset as (a)
    table = record_table(lines, path)
    run_mtc(table.slice(0, BATCH), config)
    b_sub_seconds, b_sub = run_mtc(table.take(subset), config)
    b_seconds, b_table = run_mtc(table, config)
    b_rate, b_sub_rate = n / b_seconds, len(subset) / b_sub_seconds
    first_fill, graph_module.FIRST_SEARCH_FILL = graph_module.FIRST_SEARCH_FILL, math.inf
    b0_seconds, b0_table = run_mtc(table, config)  # (b0): one neighbour search to the full radius, as before
    graph_module.FIRST_SEARCH_FILL = first_fill
    assert b0_table.equals(b_table), "the first, shorter search changed a graph"
    b_rejected = Counter(r for r in b_table.column("reason").to_pylist() if r is not None)
    b_edges = pc.sum(pc.list_value_length(b_table.column("edge_src"))).as_py()
    mismatches = compare(a_results, b_sub)
    rss_b = peak_rss_mib()

    # (c)
    ray_result = None
    if not args.skip_ray:
        with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
            ray_result = run_ray(lines, Path(tmp), config, args.warm_repeats)
    rss_c = peak_rss_mib()

    # report
    rows = [
        ("(a) CGCNN baseline (pymatgen get_all_neighbors)", len(subset), a_seconds, a_rate),
        ("(b) mtc featurize_table, 1 process, same subset", len(subset), b_sub_seconds, b_sub_rate),
        ("(b0) (b) with one neighbour search to 8 A (before)", n, b0_seconds, n / b0_seconds),
        ("(b) mtc featurize_table, 1 process", n, b_seconds, b_rate),
    ]
    if ray_result:
        c_best = min(ray_result["warm"])
        c_rate = n / c_best
        c_cold = ray_result["ray_start"] + ray_result["first_run"]
        rows += [
            ("(c) mtc featurize on Ray Data, warm (best)", n, c_best, c_rate),
            ("(c) mtc featurize on Ray Data, cold (+ray start)", n, c_cold, n / c_cold),
        ]
    print(f"{'stage':<52} {'crystals':>8} {'seconds':>8} {'crystals/s':>11}")
    for name, count, seconds, rate in rows:
        print(f"{name:<52} {count:>8} {seconds:>8.2f} {rate:>11.1f}")
    print()
    print(f"b/a  (same subset)        {b_sub_rate / a_rate:8.1f}x   target >= 30x")
    print(f"b/a  (b on all N)         {b_rate / a_rate:8.1f}x")
    print(f"b/b0 (first short search) {b0_seconds / b_seconds:8.2f}x")
    if ray_result:
        print(f"c/b  (warm, all N)        {c_rate / b_rate:8.2f}x   target >= 1.3x on {os.cpu_count()} cores")
        print(f"c cold/b                  {(n / c_cold) / b_rate:8.2f}x")
    print()
    print(
        f"correctness (b) vs (a) on {len(subset)} crystals: "
        + (", ".join(f"{k}: {v}" for k, v in mismatches.items() if v) or "0 mismatches")
        + " (neighbour counts per atom, kept distances to 1e-4 Å, neighbour index sets)"
    )
    per_atom = b_edges / max(1, atoms.sum())
    print(f"(b) rejected: {dict(b_rejected) or 'none'}; {b_edges:,} edges, {per_atom:.2f} per atom")
    print()
    print("peak RSS of this process (ru_maxrss, cumulative):")
    print(f"  after (a) {rss_a:8.0f} MiB   after (b) {rss_b:8.0f} MiB   after (c) {rss_c:8.0f} MiB")
    if ray_result:
        r = ray_result
        print(
            f"  (c) Ray processes, peak sum of RSS (shared pages counted per process): "
            f"workers (ray::*) {r['peak_workers']:.0f} MiB, all Ray processes {r['peak_all']:.0f} MiB"
        )
        print()
        print(
            f"(c) {r['where']}; ray start {r['ray_start']:.2f} s, first run {r['first_run']:.2f} s, "
            f"warm runs {', '.join(f'{s:.2f}' for s in r['warm'])} s"
        )
        print(f"(c) read {r['n_read']}, written {r['n_written']}, rejected {r['rejected'] or 'none'}")
        print(
            f"(c) shards: {r['n_shards']} part-*.parquet, {r['shard_bytes'] / 1e6:.2f} MB, "
            f"{r['shard_bytes'] / max(1, r['n_written']):.0f} bytes/crystal (zstd)"
        )

    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.profile:
        print()
        print(f"cProfile of (b) on all {n} crystals, top 15 by cumulative time:")
        print(profile_mtc(table, config))


if __name__ == "__main__":
    main()
