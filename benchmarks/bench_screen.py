"""Screening throughput (Parquet -> predictions Parquet) against featurize-only throughput, same data, same run.

    .venv/bin/python benchmarks/bench_screen.py [--n 10000] [--model models:/NAME@ALIAS] [--data PATH]

Without --model, a small model is trained first (1 epoch on the demo data, not timed) and registered in a
benchmark-private MLflow store. Structures/s are end to end: read, featurize, predict, write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bench_data import DEMO, REPO, add_data_option, first_lines


def structures_parquet(src: Path, n: int, path: Path) -> Path:
    """The first n crystals of ``src`` as a structure database (id + lattice/species/frac_coords, no labels)."""
    rows = []
    for line in first_lines(src, n):
        r = json.loads(line)
        rows.append({k: r[k] for k in ("id", "lattice", "species", "frac_coords")})
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4096)
    return path


def train_small_model() -> str:
    from mtc.config import FeaturizeConfig, TrainConfig, load_config
    from mtc.data.featurize import featurize
    from mtc.registry.models import promote, publish
    from mtc.train.trainer import train

    shards = Path(os.environ["MTC_HOME"]) / "shards"
    featurize(
        DEMO,
        shards,
        FeaturizeConfig(),
        labels=["formation_energy_per_atom", "band_gap", "efermi"],
    )
    config = load_config(TrainConfig, REPO / "configs/mt3.yaml", ["epochs=1", "experiment=bench-screen"])
    result = train(shards, config)
    promote("mtc-bench", publish(result.run_id, result.bundle, "mtc-bench")["version"], "bench")
    return "models:/mtc-bench@bench"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def arguments(doc: str) -> argparse.ArgumentParser:
    """``--n``, ``--model`` and ``--data``: what a benchmark of the screen's path takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--model", default=None)
    add_data_option(parser)
    return parser


def prepare(args: argparse.Namespace, name: str) -> tuple[Path, str, Path, Path]:
    """(work folder, model URI, database of the first ``args.n`` crystals, a 300-crystal warm-up database).

    Prints the command and the machine, starts Ray, and trains the small model unless ``args.model`` names one.
    """
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    os.environ.setdefault("MTC_HOME", str(work / "home"))
    from mtc import tracking
    from mtc.cluster import connect

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    print(connect())
    tracking.configure()
    model = args.model or train_small_model()
    db = structures_parquet(args.data, args.n, work / "db.parquet")
    return work, model, db, structures_parquet(args.data, 300, work / "warm.parquet")


def main() -> None:
    args = arguments(__doc__).parse_args()
    work, model, db, warm = prepare(args, "screen")

    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize
    from mtc.screen.score import screen

    featurize(warm, work / "warm-shards", FeaturizeConfig(), labels=[])  # start Ray workers and imports
    screen(warm, model, work / "warm-screen", workers=2)
    seconds = {"featurize only (all CPUs)": timed(lambda: featurize(db, work / "shards", FeaturizeConfig(), labels=[]))}
    for workers in (1, 2):
        out = work / f"screen-{workers}"
        seconds[f"screen, {workers} worker(s)"] = timed(lambda o=out, w=workers: screen(db, model, o, workers=w))
        assert pq.read_table(out / "predictions").num_rows + pq.read_table(out / "rejected").num_rows == args.n

    base = args.n / seconds["featurize only (all CPUs)"]
    print(f"\n{args.n:,} structures of {args.data.name}, Parquet in -> Parquet out, model {model}")
    print(f"{'stage':32s} {'seconds':>8s} {'structures/s':>13s} {'vs featurize':>13s}")
    for stage, s in seconds.items():
        print(f"{stage:32s} {s:8.1f} {args.n / s:13.0f} {args.n / s / base:12.0%}")
    print("target: screening >= 80% of featurize-only throughput")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
