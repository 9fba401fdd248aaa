"""Per-epoch time end to end: the original CGCNN code (``main.py`` of txie-93/cgcnn) vs ``mtc train --workers 1``.

Both sides train formation energy on the same first ``--n`` crystals of mp36k, as a user runs them (a subprocess
each): atom_fea_len 64, h_fea_len 128, n_conv 3, n_h 1, batch 256, Adam lr 0.01 without schedule, split
0.8 / 0.1 / 0.1, one process on one thread (``OMP_NUM_THREADS=1``; mtc's one CPU worker gets one torch thread on
this machine). Each side runs 2 and 6 epochs; per-epoch time = (t6 - t2) / 4, so start-up, graph building
(CGCNN builds its graphs in its first epoch and caches them; mtc's shards are featurized once, untimed) and the
final test evaluation cancel. On a crowded machine start-up varies by more than a few epochs cost, so each run's
output is also stamped line by line: per epoch "between epoch lines" is the mean gap between the last five lines
each side prints once per epoch in its 6-epoch run (CGCNN after an epoch's first batch, mtc after an epoch's
report), which start-up cannot touch.

The CGCNN code is not part of mtc: pass its checkout with ``--cgcnn PATH`` (``main.py``, ``cgcnn/``, and
``data/sample-regression/atom_init.json``, its element embedding). Its input (a CIF per crystal, ``id_prop.csv``,
``atom_init.json``) is written from the same crystals into the work folder.

mtc's 6-epoch run also gives a breakdown of one epoch, from the ``time/*`` metrics its loop logs to MLflow:
data (collation and batch iteration), steps (forward, backward, optimiser), evaluation, and the previous
epoch's checkpoint and report (``ray.train.report``) and MLflow logging.

Run: ``python benchmarks/bench_epoch.py --cgcnn PATH [--n 2000] [--data PATH] [--mtc-set KEY=VALUE ...]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_data import REPO, add_data_option, first_lines

TARGET = "formation_energy_per_atom"
EPOCHS = (2, 6)
SIZES = {"atom_fea_len": 64, "h_fea_len": 128, "n_conv": 3, "n_h": 1}
BATCH, LR = 256, 0.01
STEADY = 4  # epochs timed from the 6-epoch runs' printed lines
# the line each side prints once per epoch: CGCNN after an epoch's first batch, mtc after each epoch's report
CGCNN_EPOCH = re.compile(r"Epoch: \[\d+\]\[0/")
MTC_EPOCH = re.compile(r"\s*epoch \d+/\d+:")
PARTS = ("data_s", "steps_s", "eval_s", "checkpoint_s", "report_s", "log_s")


def write_cgcnn_input(rows: list[dict], atom_init: Path, folder: Path) -> Path:
    """CGCNN's input layout: ``<id>.cif`` per crystal, ``id_prop.csv`` (id, target; no header), ``atom_init.json``."""
    from pymatgen.core import Lattice, Structure

    if (folder / "id_prop.csv").exists():  # written by an earlier run into the same --work folder
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "id_prop.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        for row in rows:
            structure = Structure(Lattice(row["lattice"]), row["species"], row["frac_coords"])
            structure.to(filename=str(folder / f"{row['id']}.cif"))
            writer.writerow([row["id"], row[TARGET]])
    shutil.copy(atom_init, folder / "atom_init.json")
    return folder


def cgcnn_command(cgcnn: Path, data: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        str(cgcnn / "main.py"),
        "--task=regression",
        "--disable-cuda",
        "--workers=0",
        f"--epochs={epochs}",
        f"--batch-size={BATCH}",
        "--optim=Adam",
        f"--lr={LR}",
        "--lr-milestones=100000",
        "--train-ratio=0.8",
        "--val-ratio=0.1",
        "--test-ratio=0.1",
        "--print-freq=1000",
        f"--atom-fea-len={SIZES['atom_fea_len']}",
        f"--h-fea-len={SIZES['h_fea_len']}",
        f"--n-conv={SIZES['n_conv']}",
        f"--n-h={SIZES['n_h']}",
        str(data),
    ]


def mtc_command(repo: Path, shards: Path, epochs: int, extra: list[str]) -> list[str]:
    sets = [f"{k}={v}" for k, v in (("model." + k, v) for k, v in SIZES.items())]
    sets += [
        f"epochs={epochs}",
        f"batch_size={BATCH}",
        f"optim.lr={LR}",
        "optim.scheduler=none",
        "optim.warmup_epochs=0",
        "split.val=0.1",
        "split.test=0.1",
        "patience=0",
        *extra,
    ]
    config = repo / "configs" / f"st_{TARGET}.yaml"
    head = [sys.executable, "-m", "mtc_cli", "train", "--data", str(shards), "--config", str(config)]
    return [*head, "--workers", "1", "--register", "", *[a for s in sets for a in ("--set", s)]]


def python_path(repo: Path) -> dict[str, str]:
    """The environment entry that runs mtc from the checkout ``repo``."""
    return {"PYTHONPATH": os.pathsep.join([str(repo / "platform"), str(repo / "cli")])}


RAY_START_FAILED = "timed out during startup"  # Ray's 30 s raylet start-up limit, missed on a crowded machine


@dataclass
class Timing:
    """A run's wall seconds, and when (seconds after its start) each of its epoch lines was printed."""

    seconds: float
    epoch_lines: list[float]

    def steady_epoch(self) -> float:
        """Mean gap between its last ``STEADY + 1`` epoch lines: one epoch, start-up and the first epoch left out."""
        gaps = np.diff(self.epoch_lines)[-STEADY:]
        return float(gaps.mean()) if len(gaps) else float("nan")


def timed(command: list[str], cwd: Path, env: dict[str, str], epoch_line: re.Pattern, attempts: int = 3) -> Timing:
    """Runs ``command``, its output into ``cwd/log.txt`` (shown when it fails), each line matching ``epoch_line``
    stamped as it arrives. A run whose Ray did not start is tried again, up to ``attempts`` times."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**env, "PYTHONUNBUFFERED": "1"}  # lines arrive when printed, not when a buffer fills
    for _ in range(attempts):
        started, stamps, output = time.perf_counter(), [], []
        with subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:
                if epoch_line.match(line):
                    stamps.append(time.perf_counter() - started)
                output.append(line)
        seconds = time.perf_counter() - started
        (cwd / "log.txt").write_text("".join(output))
        if proc.returncode == 0:
            return Timing(seconds, stamps)
        if not any(RAY_START_FAILED in line for line in output):
            break
        print(f"  Ray did not start in time; again: {' '.join(command[:4])} ...", flush=True)
    sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{''.join(output)[-3000:]}")


def report(name: str, epochs: int, timing: Timing) -> None:
    between = f", {timing.steady_epoch():.2f} s between epoch lines" if epochs == EPOCHS[1] else ""
    print(f"{name}, {epochs} epochs: {timing.seconds:.1f} s{between} (load {os.getloadavg()[0]:.1f})", flush=True)


def per_epoch(times: dict[int, Timing]) -> float:
    """(t6 - t2) / 4: what one more epoch costs, start-up and one-off work cancelled."""
    low, high = EPOCHS
    return (times[high].seconds - times[low].seconds) / (high - low)


def mtc_breakdown(home: Path) -> dict[str, float]:
    """Mean of each ``time/*`` metric at steps 3-6 of the latest run in ``home``'s MLflow store (the first epoch reads
    the splits and always checkpoints; log, checkpoint and report times at step e are epoch e-1's)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)[0]
    means = {}
    for part in PARTS:
        history = [m.value for m in client.get_metric_history(run.info.run_id, f"time/{part}") if m.step > 2]
        means[part] = sum(history) / len(history) if history else float("nan")
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cgcnn", type=Path, required=True, help="a checkout of txie-93/cgcnn (main.py, cgcnn/)")
    parser.add_argument("--n", type=int, default=2000, help="first N crystals of the data (default 2000)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--mtc-set", action="append", default=[], help="extra mtc config override KEY=VALUE (repeatable)"
    )
    parser.add_argument("--skip-cgcnn", action="store_true", help="time mtc only")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="another mtc checkout to time alongside (e.g. `git worktree add /tmp/before COMMIT`): before vs after",
    )
    add_data_option(parser)
    args = parser.parse_args()
    atom_init = args.cgcnn / "data" / "sample-regression" / "atom_init.json"
    if not (args.cgcnn / "main.py").is_file() or not atom_init.is_file():
        sys.exit(f"--cgcnn {args.cgcnn}: expected main.py and data/sample-regression/atom_init.json there")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-epoch-"))
    lines = first_lines(args.data, args.n)
    rows = [json.loads(line) for line in lines]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)

    work.mkdir(parents=True, exist_ok=True)
    jsonl = work / "crystals.jsonl"
    jsonl.write_text("".join(lines))
    shards = work / "shards"
    if not (shards / "manifest.json").exists():
        featurize = [sys.executable, "-m", "mtc_cli", "featurize", str(jsonl), "--out", str(shards), "--label", TARGET]
        featurize_env = {**env, "MTC_HOME": str(work / "featurize"), **python_path(REPO)}
        timed(featurize, work / "featurize", featurize_env, MTC_EPOCH)
    cgcnn_data = None if args.skip_cgcnn else write_cgcnn_input(rows, atom_init, work / "cgcnn-data")
    sides = {"mtc": REPO, **({"mtc before": args.before.resolve()} if args.before else {})}
    times: dict[str, dict[int, Timing]] = {name: {} for name in [*sides, "CGCNN"]}
    for epochs in EPOCHS:  # the sides alternate, so a change in the machine's load hits all of them
        for name, repo in sides.items():
            home = work / f"{name.replace(' ', '-')}-{epochs}"
            shutil.rmtree(home, ignore_errors=True)
            side_env = {**env, "MTC_HOME": str(home), **python_path(repo)}
            times[name][epochs] = timed(mtc_command(repo, shards, epochs, args.mtc_set), home, side_env, MTC_EPOCH)
            report(f"{name} train", epochs, times[name][epochs])
        if cgcnn_data is not None:
            command = cgcnn_command(args.cgcnn, cgcnn_data, epochs)
            times["CGCNN"][epochs] = timed(command, work / f"cgcnn-{epochs}", env, CGCNN_EPOCH)
            report("CGCNN main.py", epochs, times["CGCNN"][epochs])
    epoch_s = {name: per_epoch(t) for name, t in times.items() if t}
    steady = {name: t[EPOCHS[1]].steady_epoch() for name, t in times.items() if t}
    for name in epoch_s:
        print(
            f"{name} per epoch: (t6 - t2) / 4 = {epoch_s[name]:.2f} s; between printed epoch lines {steady[name]:.2f} s"
        )
    parts = mtc_breakdown(work / f"mtc-{EPOCHS[1]}")
    print(
        "mtc epoch parts, s (mean of steps 3-6, MLflow time/*): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
    )
    rest = steady["mtc"] - sum(parts.values())
    print(f"  sum {sum(parts.values()):.2f} s; rest of an epoch between lines (Ray Train, progress relay) {rest:.2f} s")
    for name in epoch_s:
        if name != "mtc":
            ratios = epoch_s[name] / epoch_s["mtc"], steady[name] / steady["mtc"]
            print(f"per epoch, {name} / mtc: {ratios[0]:.2f}x ((t6 - t2) / 4), {ratios[1]:.2f}x (between epoch lines)")
    print(f"work folder: {work}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
