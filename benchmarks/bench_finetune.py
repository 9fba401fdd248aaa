"""Fine-tuning vs training from scratch on small data: test MAE of log10 K_VRH and log10 G_VRH (configs/elastic.yaml).

Data: ``--data`` (default ``data/mp36k/mp_elastic_3191.jsonl.gz``, 3,191 MP crystals with elastic moduli), featurized
once into ``bench-out/shards-elastic`` (reused on re-runs). One split for every cell (60/20/20, ``split.seed`` 0): the
validation and test crystals are the same everywhere; the training split is subsampled to ``--sizes`` crystals
(``split.train_fraction``, nested: the 100 are among the 300, ...; ``all`` is the whole training split).

Each cell (size, seed, side) is one run of ``mtc.train.trainer.train`` (the driver, model and loop of ``mtc train``)
in this process (Ray Train's local mode: no worker actors to start per run; ``--actors``: one Ray Train worker, as
``mtc train``), data through Ray Data, logged to MLflow. ``finetune`` starts from ``--init SOURCE`` (a bundle folder,
or a model URI of the MLflow store under ``$MTC_HOME``), ``scratch`` from random weights; both use the same config
(the source's trunk width and depth, applied to both), epochs, batch size, seed and split; no early stopping; the
test MAE is that of the best epoch by validation score. Seeds (``--seeds``) change the model's initialisation and the
batch order, never the split.

Resumable: each finished run appends its rows to ``--out`` (``bench-out/finetune/results.parquet``) at once; a rerun
skips the cells already there for the same protocol: the config (epochs, batch size...) and, for fine-tuned runs, the
source's weights (a digest of them, so scratch runs are shared by every source and a folder rewritten in place counts
as a new source). ``--budget-minutes M`` starts
no run after M minutes. Cells run smallest size first, so a budget cut leaves the large sizes short of seeds.

Prints per size and task: test MAE mean ± sample std over the finished seeds for both sides and the relative change
(fine-tuned − scratch) / scratch.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_finetune.py --init /path/to/bundle --budget-minutes 50``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from bench_accuracy import machine_line, use_bench_home
from bench_data import REPO

ELASTIC = REPO / "data" / "mp36k" / "mp_elastic_3191.jsonl.gz"
CONFIG = REPO / "configs" / "elastic.yaml"
LABELS = ["bulk_modulus_vrh", "shear_modulus_vrh"]
EXPERIMENT = "bench-finetune"
SIDES = ("scratch", "finetune")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="source model: a bundle folder or models:/NAME@ALIAS ...")
    parser.add_argument("--data", type=Path, default=ELASTIC, help="JSONL(.gz) with bulk/shear_modulus_vrh")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "all"], help="training crystals")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (both sides)")
    parser.add_argument("--actors", action="store_true", help="train in a Ray Train worker actor, not in-process")
    parser.add_argument("--budget-minutes", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "finetune" / "results.parquet")
    parser.add_argument("--bench-dir", type=Path, default=REPO / "bench-out")
    return parser.parse_args()


def train_count(shards: Path, config, fraction: float) -> int:
    """Training crystals of ``config``'s split at ``fraction`` (the split is a hash of the ids)."""
    from mtc.data.shards import read_shards
    from mtc.data.splits import TRAIN, split_codes

    ids = read_shards(shards, columns=["id"]).column("id").to_pylist()
    s = config.split
    return int((split_codes(ids, s.val, s.test, s.seed, fraction) == TRAIN).sum())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def protocols(config, bundle) -> dict[str, str]:
    """Per side, what a finished run must share with this invocation to count: the config (seed, split and run name
    aside: they vary per cell; ``finetune:`` aside for scratch runs, which ignore it) and, for ``finetune``, the
    ``finetune:`` section and the source's weights."""
    setup = config.model_dump(mode="json", exclude={"seed", "split", "run_name", "finetune"})
    scratch = digest(json.dumps(setup, sort_keys=True).encode())
    weights = digest(b"".join(k.encode() + v.numpy().tobytes() for k, v in sorted(bundle.state_dict.items())))
    return {"scratch": scratch, "finetune": digest(f"{scratch}:{config.finetune.model_dump_json()}:{weights}".encode())}


def of_protocols(frame, protocol: dict[str, str]):
    """The rows of ``frame`` run under ``protocol`` (per side)."""
    return frame[frame["protocol"] == frame["side"].map(protocol)]


def read_results(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def append_results(path: Path, rows: list[dict]) -> None:
    """Adds ``rows`` to the Parquet file atomically (a killed run never leaves a half-written file)."""
    import pandas as pd

    frame = pd.concat([read_results(path), pd.DataFrame(rows)], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def summary_table(frame, tasks: list[str], sizes: list[str]) -> list[str]:
    """Lines of the per size x task table: MAE mean ± std (seeds) per side and the relative change."""
    lines = [
        f"{'size':>6} {'n_train':>7}  {'task':<22}{'scratch MAE':>21}{'fine-tuned MAE':>21}{'change':>9}",
    ]
    for size in sizes:
        cell = frame[frame["size"] == size]
        if cell.empty:
            continue
        for task in tasks:
            stats = {}
            for side in SIDES:
                values = cell[(cell["side"] == side) & (cell["task"] == task)]["test_mae"]
                std = values.std() if len(values) > 1 else float("nan")
                stats[side] = (values.mean(), std, len(values))
            text = {s: f"{m:.4f} ± {sd:.4f} ({n})" if n else "n/a" for s, (m, sd, n) in stats.items()}
            a, b = stats["finetune"][0], stats["scratch"][0]
            change = f"{(a - b) / b * 100:+.1f}%" if stats["finetune"][2] and stats["scratch"][2] else "n/a"
            n_train = int(cell["n_train"].iloc[0])
            lines.append(f"{size:>6} {n_train:>7}  {task:<22}{text['scratch']:>21}{text['finetune']:>21}{change:>9}")
    lines.append("MAE in log10 GPa on the same test crystals; ± sample std over seeds (n seeds in brackets)")
    return lines


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    home = use_bench_home(args.bench_dir / "mtc-home")

    from mtc import tracking
    from mtc.cluster import connect
    from mtc.config import FeaturizeConfig, TrainConfig, load_config
    from mtc.data.featurize import featurize
    from mtc.registry.models import load_source
    from mtc.train.finetune import ParentModel, align_to_parent
    from mtc.train.trainer import train

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(machine_line())
    print(connect())
    tracking.configure()
    print(f"MTC_HOME={home} | MLflow {tracking.tracking_uri()} | experiment {EXPERIMENT}")
    uri, bundle = load_source(args.init)
    parent = ParentModel(bundle, uri)
    shards = args.bench_dir / "shards-elastic"
    summary = featurize(args.data, shards, FeaturizeConfig(), labels=LABELS)
    print(f"data: {summary.n_written} crystals ({summary.n_rejected} rejected) -> {shards}")

    base = [*args.overrides, f"epochs={args.epochs}", f"batch_size={args.batch_size}", "patience=0"]
    base += [f"experiment={EXPERIMENT}"]
    config, notes = align_to_parent(load_config(TrainConfig, args.config, base), bundle)
    print(f"source {uri} (tasks {', '.join(bundle.task_names)}); both sides: {'; '.join(notes) or 'config as is'}")
    protocol = protocols(config, bundle)
    n_all = train_count(shards, config, 1.0)
    tasks = [t.name for t in config.tasks]
    print(
        f"protocols {protocol}: {config.epochs} epochs, batch {config.batch_size}, no early stopping, split "
        f"{1 - config.split.val - config.split.test:.0%}/{config.split.val:.0%}/{config.split.test:.0%} seed "
        f"{config.split.seed} ({n_all} training crystals in all), finetune {config.finetune.model_dump()}"
    )

    done = read_results(args.out)
    finished = set()
    if not done.empty:
        mine = of_protocols(done, protocol)
        finished = set(zip(mine["size"], mine["seed"], mine["side"], strict=True))
    cells = [(size, seed, side) for size in args.sizes for seed in args.seeds for side in SIDES]
    todo = [c for c in cells if c not in finished]
    print(f"{len(cells) - len(todo)} of {len(cells)} runs already in {args.out}; {len(todo)} to run", flush=True)
    for i, (size, seed, side) in enumerate(todo):
        minutes = (time.perf_counter() - started) / 60
        if args.budget_minutes is not None and minutes >= args.budget_minutes:
            print(f"budget of {args.budget_minutes:g} min spent ({minutes:.1f} min): {len(todo) - i} runs not started")
            break
        fraction = 1.0 if size == "all" else min(1.0, int(size) / n_all)
        run_config = config.model_copy(
            update={
                "seed": seed,
                "split": config.split.model_copy(update={"train_fraction": fraction}),
                "run_name": f"{side}-n{size}-seed{seed}",
            }
        )
        t0 = time.perf_counter()
        result = train(shards, run_config, parent=parent if side == "finetune" else None, in_process=not args.actors)
        wall = time.perf_counter() - t0
        n_train = train_count(shards, run_config, fraction)
        rows = [
            {
                "protocol": protocol[side],
                "size": size,
                "n_train": n_train,
                "seed": seed,
                "side": side,
                "task": task,
                "test_mae": result.metrics.get(f"test/{task}/mae"),
                "best_epoch": int(result.metrics.get("best_epoch", 0)),
                "wall_s": wall,
                "run_id": result.run_id,
                "source": uri if side == "finetune" else "",
            }
            for task in tasks
        ]
        append_results(args.out, rows)
        maes = ", ".join(f"{r['task']} {r['test_mae']:.4f}" for r in rows)
        print(f"{side:>8} n={n_train:<5} seed {seed}: {maes} ({wall:.0f} s, run {result.run_id})", flush=True)

    frame = read_results(args.out)
    frame = of_protocols(frame, protocol)
    print()
    print("\n".join(summary_table(frame, tasks, args.sizes)))
    print(f"wall time {(time.perf_counter() - started) / 60:.1f} min; results: {args.out}")


if __name__ == "__main__":
    main()
