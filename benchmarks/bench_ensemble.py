"""Ensemble forward throughput: one member vs K members stacked in one pass vs K members one by one
(sharing collation and the edge expansion), same run.

    .venv/bin/python benchmarks/bench_ensemble.py [--n 2000] [--k 5] [--batch 256] [--repeats 3] [--threads 1]

The first n crystals are featurized in process (untimed) and collated into batches; K models of default sizes
(3 tasks, random weights and BatchNorm statistics, one per seed) are timed. The three paths alternate batch by
batch; crystals/s come from the best of ``repeats`` passes over all batches. The target: K = 5 stacked well
under 5x the time of one member.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from bench_data import add_data_option
from bench_inference import graphs_of, random_model, time_paths

from mtc.data.batching import collate_arrow
from mtc.model.ensemble import EnsembleInference
from mtc.model.inference import InferenceModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_data_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()}")

    graphs = graphs_of(args.data, args.n)
    batches = [collate_arrow(graphs.slice(s, args.batch)) for s in range(0, graphs.num_rows, args.batch)]
    members = []
    for seed in range(args.k):
        model = random_model(None)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            for p in model.parameters():
                p.mul_(1 + 0.2 * torch.rand_like(p))
        members.append(model)
    paths = {
        "1 member": InferenceModel(members[0]),
        f"{args.k} stacked": EnsembleInference(members, stacked=True),
        f"{args.k} one by one": EnsembleInference(members, stacked=False),
    }
    diff = 0.0

    def compare(outputs):
        nonlocal diff
        diff = max(diff, (outputs[f"{args.k} stacked"] - outputs[f"{args.k} one by one"]).abs().max().item())

    seconds = time_paths(paths, batches, args.repeats, compare)

    rate = {name: graphs.num_rows / min(s) for name, s in seconds.items()}
    print(f"{graphs.num_rows} crystals, batch {args.batch}, {args.threads} thread(s), default sizes, 3 tasks")
    for name in paths:
        print(f"{name:>14}: {rate[name]:8.0f} crystals/s  (passes: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    one, stacked, serial = (rate[name] for name in paths)
    print(f"time of K={args.k} stacked / 1 member: {one / stacked:.2f}x (one by one: {one / serial:.2f}x)")
    print(f"max |stacked - one by one| {diff:.2e}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
