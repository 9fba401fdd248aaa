"""A tune on mp36k under a stated budget: the best grouping and weights found, and per task the test MAE of the
tuned configuration against the same task trained alone with the same budget (the tune's own reference runs).

    .venv/bin/python benchmarks/bench_tune.py [--n 3000] [--epochs 3] [--trials 6] [--data PATH]

Tasks: formation energy, band gap, Fermi energy (configs/mt3_onetrunk.yaml's model, one trunk per group); the
space: every grouping of the three tasks, fixed weights on the simplex or uncertainty weighting, learning rate
1e-3..1e-2.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_data import REPO, add_data_option, first_lines

TASKS = ["formation_energy_per_atom", "band_gap", "efermi"]


def space_yaml(epochs: int, trials: int) -> dict:
    return {
        "base": str(REPO / "configs/mt3_onetrunk.yaml"),
        "train": {"epochs": epochs, "patience": 0, "experiment": "bench-tune"},
        "trials": trials,
        "search": "optuna",
        "space": {
            "loss_weights": True,
            "strategy": ["fixed", "uncertainty"],
            "groupings": "all",
            "lr": {"low": 0.001, "high": 0.01},
        },
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "seed": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    add_data_option(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    os.environ.setdefault("MTC_HOME", str(work / "home"))

    import mlflow

    from mtc import tracking
    from mtc.cluster import connect
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize
    from mtc.tune.driver import start_tune
    from mtc.tune.search import load_space

    started = time.perf_counter()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    print(connect())
    src = work / "mp.jsonl.gz"
    with gzip.open(src, "wt") as out:
        out.writelines(first_lines(args.data, args.n))
    shards = featurize(src, work / "shards", FeaturizeConfig(), labels=TASKS).out
    (work / "space.yaml").write_text(yaml.safe_dump(space_yaml(args.epochs, args.trials)))
    space = load_space(work / "space.yaml")
    outcome = start_tune(shards, space, name=f"bench-{int(time.time())}", max_concurrent=1, echo=lambda _: None)
    minutes = (time.perf_counter() - started) / 60

    client = mlflow.MlflowClient(tracking.tracking_uri())
    best = outcome.report.best
    tuned = client.get_run(best.run_id).data.metrics
    print(
        f"\nbudget: {args.n} crystals of {args.data.name} (60/20/20), {args.epochs} epochs per run, "
        f"{args.trials} trials + "
        f"{len(TASKS)} single-task references, one at a time, {minutes:.1f} min wall on 2 cores"
    )
    print(f"best trial {best.trial_id}: objective {best.objective:.3f} (mean val error / task alone; < 1 is better)")
    print(
        f"  grouping {best.config.model.groups or [TASKS]}, loss {best.config.loss.strategy} "
        f"{best.config.loss.weights or ''}, lr {best.config.optim.lr:.4g}"
    )
    print(f"\n{'task':28s} {'tuned test MAE':>15s} {'alone test MAE':>15s} {'tuned/alone':>12s}")
    for task in TASKS:
        refs = client.search_runs(
            [client.get_run(best.run_id).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}' and tags.`mtc.tune.reference` = '{task}'",
        )
        alone = refs[0].data.metrics[f"test/{task}/mae"]
        mine = tuned[f"test/{task}/mae"]
        print(f"{task:28s} {mine:15.4f} {alone:15.4f} {mine / alone:12.3f}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
