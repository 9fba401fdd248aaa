"""Training throughput through `mtc train` (Ray Train): 1 worker vs 2 workers on the same crystals and config.

The real data path, as ``mtc train`` runs it (``mtc.train.trainer.train``): Parquet graph shards -> Ray Data
(split filter, streaming split across workers, local shuffle) -> ``collate_arrow`` -> MultiTaskCGCNN under
DDP (gloo) -> Adam. Same ``--n`` crystals (a seeded sample of mp36k, shards shared with bench_accuracy.py),
same config (``configs/st_formation_energy_per_atom.yaml``: CGCNN defaults atom_fea_len 64, h_fea_len 128,
n_conv 3, batch 256, one task, formation energy), same epochs, no early stopping; only
``scaling.workers`` changes.

Throughput is the trainer's own per-epoch ``crystals_per_s`` metric (crystals stepped on by all ranks / the
epoch's training seconds, evaluation excluded), read back from the MLflow run; epoch 1 is warm-up and left
out. Wall time is the whole ``train()`` call (worker start, every epoch, validation, test, model logging).

Note: on a 2-core machine "2 workers" does not add cores: the trainer gives each worker
max(1, (CPUs - 1) // workers) torch threads, i.e. 1 thread in both cases, and Ray Data shares the same
2 cores. The ratio measures what DDP over gloo costs or gains here, not multi-node scaling.

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_train_scaling.py [--n 2000 --epochs 4]``
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import REPO, machine_line, prepare_shards, use_bench_home
from bench_data import add_data_option

CONFIG = REPO / "configs" / "st_formation_energy_per_atom.yaml"
EXPERIMENT = "bench-train-scaling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="crystals of --data (seeded sample)")
    add_data_option(parser)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; epoch 1 is not counted")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run, in order")
    parser.add_argument("--shards-dir", type=Path, default=None, help="default bench-out/shards-<data>-<n>")
    parser.add_argument("--bench-dir", type=Path, default=REPO / "bench-out")
    args = parser.parse_args()

    home = use_bench_home(args.bench_dir / "mtc-home")
    import mlflow
    import ray

    from mtc import tracking
    from mtc.cluster import connect
    from mtc.config import TrainConfig, load_config
    from mtc.train.resources import WorkerPlan
    from mtc.train.trainer import train

    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print(machine_line())
    print(connect())
    print(f"MTC_HOME={home} | MLflow {tracking.tracking_uri()} | experiment {EXPERIMENT}")
    shards, summary = prepare_shards(args.data, args.n, args.shards_dir, args.bench_dir)
    print(f"data: {summary.n_written} crystals -> {shards} ({'reused' if summary.reused else 'featurized'})")

    cpus = ray.cluster_resources().get("CPU", 1)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    rows = []
    for workers in args.workers:
        config = load_config(
            TrainConfig,
            CONFIG,
            [
                f"epochs={args.epochs}",
                "patience=0",
                f"scaling.workers={workers}",
                f"batch_size={args.batch_size}",
                f"experiment={EXPERIMENT}",
                f"run_name=scaling-{workers}w-n{args.n}-e{args.epochs}",
            ],
        )
        threads = WorkerPlan.of(config.scaling).torch_threads(cpus)
        print(
            f"--- {workers} worker(s) x {config.scaling.cpus_per_worker:g} CPU, {threads} torch thread(s) each, "
            f"{config.epochs} epochs, batch {config.batch_size}",
            flush=True,
        )
        t0 = time.perf_counter()
        result = train(shards, config)
        wall = time.perf_counter() - t0
        rates = {m.step: m.value for m in client.get_metric_history(result.run_id, "crystals_per_s")}
        steps = {m.step: m.value for m in client.get_metric_history(result.run_id, "steps")}
        timed = [rates[e] for e in sorted(rates) if e >= 2]
        print(
            "    crystals/s per epoch: "
            + ", ".join(f"{e}: {rates[e]:.0f}" for e in sorted(rates))
            + f" | steps per epoch {int(steps.get(2, steps.get(1, 0)))} | wall {wall:.1f} s "
            f"| test MAE {result.metrics.get('test/formation_energy_per_atom/mae', float('nan')):.4f}",
            flush=True,
        )
        rows.append(
            {
                "workers": workers,
                "threads": threads,
                "rate": statistics.mean(timed) if timed else float("nan"),
                "min": min(timed, default=float("nan")),
                "max": max(timed, default=float("nan")),
                "steps": int(steps.get(2, steps.get(1, 0))),
                "wall": wall,
            }
        )

    print()
    print(
        f"=== training throughput via mtc train (Ray Train), n={summary.n_written} crystals, "
        f"{args.epochs} epochs, batch {args.batch_size}, CGCNN defaults, 1 task ==="
    )
    header = f"{'workers':>7}{'threads/w':>10}{'steps/ep':>9}{'crystals/s (ep>=2)':>20}{'min-max':>13}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"{r['min']:.0f}-{r['max']:.0f}"
        print(f"{r['workers']:>7}{r['threads']:>10}{r['steps']:>9}{r['rate']:>20.1f}{spread:>13}{r['wall']:>9.1f}")
    by = {r["workers"]: r for r in rows}
    if 1 in by and 2 in by:
        print(
            f"ratio 2w/1w: throughput {by[2]['rate'] / by[1]['rate']:.2f}x, "
            f"wall time {by[2]['wall'] / by[1]['wall']:.2f}x"
        )
    threads = ", ".join(f"{r['workers']}w: {r['threads']}" for r in rows)
    print(
        f"note: this machine has {os.cpu_count()} cores in total (Ray sees {cpus:g} CPUs); torch threads per worker "
        f"{threads}; Ray Data shares the same cores, so 2 workers add no hardware. Crystals/s counts "
        f"crystals stepped on per second of training (evaluation excluded); the last partial batch of each "
        f"rank is dropped, so 2 workers step on fewer crystals per epoch."
    )
    print(machine_line())
    print(f"command: {command}")


if __name__ == "__main__":
    main()
