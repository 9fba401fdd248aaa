"""Forward-pass throughput: ``model.eval()`` against the frozen ``InferenceModel``, same batches, same run.

    .venv/bin/python benchmarks/bench_inference.py [--n 2000] [--batch 256] [--repeats 3] [--shared-convs K]

The first n crystals are featurized in process with mtc's featurizer (untimed) and collated into batches;
a 3-task model of default sizes (random weights, random BatchNorm statistics) is timed on one thread.
The two paths alternate batch by batch; crystals/s come from the best of ``repeats`` passes over all batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import torch
from bench_data import add_data_option, first_lines
from torch import nn

from mtc.config import FeaturizeConfig
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.model.inference import InferenceModel
from mtc.model.multitask import MultiTaskCGCNN

TASKS = [
    {"name": "formation_energy_per_atom"},
    {"name": "band_gap"},
    {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
]


def graphs_of(path, n: int) -> pa.Table:
    """The first n crystals of a JSONL file featurized as graph rows (rejected rows dropped)."""
    rows = [json.loads(line) for line in first_lines(path, n)]
    keys = ("id", "lattice", "species", "frac_coords")
    records = pa.Table.from_pylist([{**{k: r[k] for k in keys}, "source": "bench"} for r in rows])
    graphs = featurize_table(records, FeaturizeConfig(), [])
    return graphs.filter(pc.is_null(graphs.column("reason")))


def random_model(shared_convs: int | None) -> MultiTaskCGCNN:
    """Default sizes, eval mode, BatchNorms with non-trivial affines and running statistics."""
    torch.manual_seed(0)
    model = MultiTaskCGCNN(TASKS, shared_convs=shared_convs)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_(0.0, 0.5)
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
    return model.eval()


def time_paths(paths: dict, batches: list, repeats: int, compare) -> dict[str, list[float]]:
    """Seconds of each forward path over all ``batches``, ``repeats`` times, after a warm-up on the first batch;
    ``compare(outputs)`` sees each batch's outputs by path name (for the max |delta| between paths)."""
    for path in paths.values():
        path(batches[0])
    seconds = {name: [] for name in paths}
    for _ in range(repeats):
        total = dict.fromkeys(paths, 0.0)
        for b in batches:
            outputs = {}
            for name, path in paths.items():
                t0 = time.perf_counter()
                outputs[name] = path(b)
                total[name] += time.perf_counter() - t0
            compare(outputs)
        for name in paths:
            seconds[name].append(total[name])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared-convs", type=int, default=None)
    add_data_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()}")

    started = time.perf_counter()
    graphs = graphs_of(args.data, args.n)
    batches = [collate_arrow(graphs.slice(s, args.batch)) for s in range(0, graphs.num_rows, args.batch)]
    n_atoms = sum(b.atomic_numbers.numel() for b in batches)
    n_edges = sum(b.edge_src.numel() for b in batches)
    print(
        f"{graphs.num_rows} crystals, {n_atoms} atoms, {n_edges} edges in {len(batches)} batches "
        f"(featurized in {time.perf_counter() - started:.1f} s)"
    )

    model = random_model(args.shared_convs)
    frozen = InferenceModel(model)
    paths = {"eval": lambda b: model(b), "inference": frozen}
    diff = scale = 0.0

    def compare(outputs):
        nonlocal diff, scale
        diff = max(diff, (outputs["eval"] - outputs["inference"]).abs().max().item())
        scale = max(scale, outputs["eval"].abs().max().item())

    with torch.no_grad():
        seconds = time_paths(paths, batches, args.repeats, compare)

    rate = {name: graphs.num_rows / min(s) for name, s in seconds.items()}
    print(f"model: 3 tasks, shared_convs={args.shared_convs}, {model.n_parameters()} parameters, 1 thread")
    for name in paths:
        print(f"{name:>9}: {rate[name]:8.0f} crystals/s  (passes: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"ratio inference / eval: {rate['inference'] / rate['eval']:.2f}x")
    print(f"max |delta| {diff:.2e}, max |output| {scale:.1f}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
