"""Calibrated uncertainty on a chemistry held out of training: mean spread, 90 % coverage and ``ood`` flags of a K = 5
ensemble on crystals with an element it never saw, against crystals like its training ones.

Done the way a user would, through the ``mtc`` CLI (subprocesses) in a benchmark-private store (``$MTC_HOME``,
default ``bench-out/mtc-home``):

1. From ``--data`` (default mp36k) take every ``--stride``-th crystal (lines 0, stride, 2·stride, ...). Every one
   that contains a ``--holdout-element`` (default S, Se, Te: the chalcogens but oxygen) is **held out**; the rest
   is featurized (``mtc featurize``, labels of ``--config``'s tasks).
2. ``mtc train --ensemble K`` on it (60/20/20 split, calibrated on its validation split), registered.
3. Two databases screened with ``mtc screen --interval 0.9``: **in-domain**, up to ``--n-eval`` crystals from
   lines ``stride // 2`` mod ``stride`` (never in the training subsample) without a held-out element; **held out**,
   the held-out crystals of step 1 (none of them in training, validation or test).
4. Per task and database, against the DFT labels: MAE, the mean served ``<task>_std``, the fraction of labels inside
   ``[<task>_lo, <task>_hi]`` (target 0.88-0.92 in-domain), the fraction of crystals with an ``ood`` flag, and the
   ratio of the held-out mean std to the in-domain one (> 1: the ensemble knows it is further from home).

Each invocation appends its figures (with the command and the protocol) to ``--out``
(``bench-out/uncertainty/results.jsonl``); the shards of a subsample are reused by a rerun with the same stride and
held-out elements.

With ``RAY_ADDRESS`` set, every command joins that Ray cluster (``mtc ... --address``) instead of starting its own.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_uncertainty.py``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_accuracy import machine_line, use_bench_home
from bench_data import REPO, add_data_option

MODEL_NAME = "mtc-bench-uncertainty"
STRUCTURE = ("id", "lattice", "species", "frac_coords")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_option(parser)
    parser.add_argument("--stride", type=int, default=10, help="take every STRIDE-th crystal for training")
    parser.add_argument("--holdout-element", nargs="+", default=["S", "Se", "Te"], help="held out of training")
    parser.add_argument("--n-eval", type=int, default=1500, help="in-domain crystals to screen (at most)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "mt3_onetrunk.yaml")  # the README's figures
    parser.add_argument("--ensemble", type=int, default=5, help="members K >= 2 (intervals need an ensemble)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--interval", type=float, default=0.9)
    parser.add_argument("--work", type=Path, default=REPO / "bench-out" / "uncertainty")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "uncertainty" / "results.jsonl")
    return parser.parse_args()


def split_rows(path: Path, stride: int, held: set[str], n_eval: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, held-out rows, in-domain evaluation rows) of the JSONL(.gz) at ``path``.

    Training: lines ``i % stride == 0`` without a ``held`` element; held out: those lines with one; in-domain: the
    first ``n_eval`` lines ``i % stride == stride // 2`` without one (disjoint from both when ``stride >= 2``).
    """
    import gzip

    train, held_out, in_domain = [], [], []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        for i, line in enumerate(line for line in fh if line.strip()):
            if i % stride not in (0, stride // 2):
                continue
            row = json.loads(line)
            has_held = not held.isdisjoint(row["species"])
            if i % stride == 0:
                (held_out if has_held else train).append(row)
            elif not has_held and len(in_domain) < n_eval:
                in_domain.append(row)
    return train, held_out, in_domain


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_database(rows: list[dict], path: Path) -> Path:
    """Structures only (no labels), as ``mtc screen`` reads them."""
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in STRUCTURE} for r in rows]), path)
    return path


RAY_START_TIMEOUT = "timed out during startup"  # Ray's fixed 30 s wait for its raylet, exceeded on an overloaded host


def mtc(*args: str, tries: int = 3) -> float:
    """Runs ``mtc ARGS`` as a user would (``python -m mtc_cli``); returns the wall time of the run that succeeded.

    A run whose embedded Ray failed to start in time is run again (up to ``tries`` in all); any other failure ends
    the benchmark with the command's output.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO / "cli"), env.get("PYTHONPATH", "")])
    for attempt in range(1, tries + 1):
        print(f"$ mtc {shlex.join(args)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mtc_cli", *args], env=env, capture_output=True, text=True)
        if not done.returncode:
            return time.perf_counter() - started
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        if RAY_START_TIMEOUT not in output or attempt == tries:
            sys.exit(f"mtc {args[0]} failed (exit {done.returncode}):\n{output}")
        print(f"  Ray did not start in time (load average {os.getloadavg()[0]:.0f}); again", flush=True)
    raise AssertionError("unreachable")


def latest_version(name: str) -> str:
    """``models:/NAME/V`` of the newest version of ``name`` in the store under ``$MTC_HOME``."""
    import mlflow

    from mtc import tracking

    versions = mlflow.MlflowClient(tracking.configure()).search_model_versions(f"name='{name}'")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def figures(predictions: pa.Table, rows: list[dict], tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per task: n, mae, mean_std, coverage (truth inside [lo, hi]), ood (fraction flagged; same for every task)."""
    truth = {r["id"]: r for r in rows}
    ids = predictions.column("id").to_pylist()
    flagged = np.array([f is not None for f in predictions.column("ood").to_pylist()])
    out = {}
    for task in tasks:
        label = np.array([truth[i].get(task) for i in ids], dtype=np.float64)
        rows_ = np.isfinite(label)
        value, std, lo, hi = (predictions.column(f"{task}{s}").to_numpy()[rows_] for s in ("", "_std", "_lo", "_hi"))
        y = label[rows_]
        out[task] = {
            "n": int(rows_.sum()),
            "mae": float(np.abs(value - y).mean()),
            "mean_std": float(std.mean()),
            "coverage": float(((lo <= y) & (y <= hi)).mean()),
            "ood": float(flagged[rows_].mean()),
        }
    return out


def report(result: dict) -> list[str]:
    """The comparison table, one line per task."""
    cover = f"cov {result['interval']:.0%}"
    head = f"{'task':<26}{'set':<10}{'n':>6}{'MAE':>9}{'mean std':>10}{cover:>9}{'ood':>7}"
    lines = [head]
    for task, sides in result["figures"].items():
        for side in ("in_domain", "held_out"):
            f = sides[side]
            lines.append(
                f"{task:<26}{side:<10}{f['n']:>6}{f['mae']:>9.4f}{f['mean_std']:>10.4f}"
                f"{f['coverage']:>9.3f}{f['ood']:>7.3f}"
            )
        ratio = sides["held_out"]["mean_std"] / sides["in_domain"]["mean_std"]
        mae_ratio = sides["held_out"]["mae"] / sides["in_domain"]["mae"]
        lines.append(f"{'':<26}held-out / in-domain: mean std {ratio:.2f}x, MAE {mae_ratio:.2f}x")
    return lines


def main() -> None:
    args = parse_args()
    if args.ensemble < 2:
        sys.exit("--ensemble must be at least 2: a single model serves no interval")
    started = time.perf_counter()
    home = use_bench_home(REPO / "bench-out" / "mtc-home")
    from mtc.config import TrainConfig, load_config

    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\n{machine_line()}\nMTC_HOME={home}", flush=True)
    config = load_config(TrainConfig, args.config, args.overrides)
    tasks = [t.name for t in config.tasks if not t.auxiliary and t.kind == "regression"]
    held = set(args.holdout_element)
    train_rows, held_rows, domain_rows = split_rows(args.data, args.stride, held, args.n_eval)
    print(
        f"data: every {args.stride}th crystal of {args.data.name}: {len(train_rows)} to featurize and train on, "
        f"{len(held_rows)} held out (containing {', '.join(sorted(held))}); {len(domain_rows)} in-domain crystals "
        "to screen (never in the subsample)",
        flush=True,
    )
    work = args.work
    shards = work / f"shards-stride{args.stride}-{'-'.join(sorted(held))}"
    seconds = {}
    if not (shards / "manifest.json").exists():
        source = write_jsonl(train_rows, work / "train.jsonl")
        labels = [x for t in config.tasks for x in ("--label", t.column)]
        seconds["featurize"] = mtc("featurize", str(source), "--out", str(shards), *labels)
    sets = [f"epochs={args.epochs}", f"batch_size={args.batch_size}", "patience=0", "experiment=bench-uncertainty"]
    train_args = ["train", "--data", str(shards), "-c", str(args.config), "--ensemble", str(args.ensemble)]
    train_args += ["--workers", str(args.workers), "--register", MODEL_NAME]
    for item in [*sets, *args.overrides]:
        train_args += ["--set", item]
    seconds["train"] = mtc(*train_args)
    model = latest_version(MODEL_NAME)
    result = {
        "command": command,
        "model": model,
        "protocol": {"stride": args.stride, "held_out": sorted(held), "sets": [*sets, *args.overrides]},
        "interval": args.interval,
        "figures": {t: {} for t in tasks},
    }
    for side, rows in (("in_domain", domain_rows), ("held_out", held_rows)):
        db = write_database(rows, work / f"{side}.parquet")
        out = work / f"screen-{side}-{model.rsplit('/', 1)[1]}"
        screen_args = ["screen", str(db), "--out", str(out), "--model", model, "--interval", str(args.interval)]
        seconds[f"screen {side}"] = mtc(*screen_args)
        for task, found in figures(pq.read_table(out / "predictions"), rows, tasks).items():
            result["figures"][task][side] = found
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result["wall_minutes"] = round((time.perf_counter() - started) / 60, 2)
    result["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    print("\n".join(report(result)))
    print(
        f"model {model}; stage seconds {result['seconds']}; wall {result['wall_minutes']:.1f} min; "
        f"{machine_line()}; appended to {args.out}"
    )


if __name__ == "__main__":
    main()
