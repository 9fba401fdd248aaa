"""Forward-pass throughput: ``model.eval()`` against the frozen ``InferenceModel``, same batches, same run.

    .venv/bin/python benchmarks/bench_inference.py [--n 2000] [--batch 256 | --batch-atoms 4096] [--repeats 3]
        [--shared-convs K]
    .venv/bin/python benchmarks/bench_inference.py --work [--budgets 2048 4096 8192 16384] [--supercells 64]
    .venv/bin/python benchmarks/bench_inference.py --precision [--n 36737]

The first n crystals are featurized in process with mtc's featurizer (untimed) and collated into batches;
a 3-task model of default sizes (random weights, random BatchNorm statistics; ``--shipped``: the shipped mp36k-mt3,
whose trained pre-activations stay in ``exp``'s range, where a random model's may not) is timed on one thread.
Five paths alternate batch by batch: ``model.eval()``; the frozen model on every atom with gathers and scatters
only and softplus and sigmoid for the gate (``InferenceModel(regular_edges=False, exp_gate=False, orbits=False)``,
the layout before ``EdgeIndex``); with ``EdgeIndex`` but that gate (``exp_gate=False``, the layout before
``gate_``); with both but on every atom (``orbits=False``, the layout before orbit batches); and the frozen model
as the screen runs it, on orbit batches (``mtc.model.orbits``). Crystals/s come from the best of ``repeats`` passes
over all batches; ``--batch-atoms`` packs batches to that many atoms as the screen does (4,096) instead of
``--batch`` crystals.

``--work``: count batches of ``--batch`` crystals against batches packed to each of ``--budgets`` atoms
(``mtc.data.packing``), through the frozen forward the screen uses (collate + forward), on two databases: the n
crystals, and ``--supercells`` supercells (mp36k crystals repeated to 400-1,000 atoms, mixed with as many small
crystals). Each pass runs in a forked child: its peak RSS above the parent's is the batches' own memory; the
settings alternate pass by pass, crystals/s from the best of ``repeats``.

``--precision``: the shipped model (``mp36k-mt3``) in float32 against its convolutions in bfloat16
(``mtc screen --precision bfloat16``), on the crystals of its own test split among the first n of mp36k (all of them
with ``--n 36737``): test MAE per task of each, the largest and mean |delta| between them, and crystals/s of the
frozen forward, batches packed to 4,096 atoms, the two alternating batch by batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from bench_data import add_data_option, first_lines
from torch import nn

from mtc.config import FeaturizeConfig, TrainConfig, load_config
from mtc.data.batching import collate_arrow
from mtc.data.featurize import featurize_table
from mtc.data.packing import Batching, atom_counts
from mtc.data.splits import TEST, split_codes
from mtc.model.bundle import ModelBundle
from mtc.model.inference import InferenceModel
from mtc.model.multitask import MultiTaskCGCNN
from mtc.registry.pretrained import model_folder

TASKS = [
    {"name": "formation_energy_per_atom"},
    {"name": "band_gap"},
    {"name": "is_metal", "kind": "binary", "derive": "band_gap == 0"},
]


KEYS = ("id", "lattice", "species", "frac_coords")
ROOT = Path(__file__).resolve().parent.parent


def graphs_of(path, n: int) -> pa.Table:
    """The first n crystals of a JSONL file featurized as graph rows (rejected rows dropped)."""
    return featurized([json.loads(line) for line in first_lines(path, n)])


def featurized(rows: list[dict]) -> pa.Table:
    """Rows of the mp36k layout featurized as graph rows (rejected rows dropped)."""
    records = pa.Table.from_pylist([{**{k: r[k] for k in KEYS}, "source": "bench"} for r in rows])
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


def supercell_graphs(path, n: int) -> pa.Table:
    """``n`` supercells of 400-1,000 atoms made from the first mp36k crystals, each followed by a small crystal."""
    from pymatgen.core import Structure

    rows = []
    for line in first_lines(path, 4 * n):
        r = json.loads(line)
        size = len(r["species"])
        m = next((m for m in range(2, 11) if 400 <= size * m**3 <= 1000), None)
        if m is None or len(rows) >= 2 * n:
            continue
        cell = Structure(r["lattice"], r["species"], r["frac_coords"]).make_supercell([m, m, m])
        big = {"id": f"{r['id']}-x{m}", "lattice": cell.lattice.matrix.tolist(), "frac_coords": cell.frac_coords}
        rows += [{**big, "species": [e.symbol for e in cell.species]}, {k: r[k] for k in KEYS}]
    for r in rows:
        r["frac_coords"] = np.asarray(r["frac_coords"]).tolist()
    return featurized(rows)


def forward_pass(model, graphs: pa.Table, batching: Batching) -> tuple[float, float]:
    """(seconds, peak RSS MiB above the start) of collate + frozen forward over ``graphs`` cut by ``batching``, in a
    forked child (its peak RSS is its own)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one pass, then report and leave without running the parent's atexit handlers
        os.close(read)
        start_rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        cuts = batching.cuts(atom_counts(graphs))
        started = time.perf_counter()
        with torch.inference_mode():
            for first, end in pairwise(cuts):
                model(collate_arrow(graphs.slice(first, end - first)))
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        os.write(write, json.dumps([seconds, peak - start_rss]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seconds, peak = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return seconds, peak


def compare_batching(args) -> None:
    """Count batches against batches packed by atoms: crystals/s and peak memory, on small and large cells."""
    started = time.perf_counter()
    databases = {f"first {args.n} of mp36k": graphs_of(args.data, args.n)}
    if args.supercells:
        big = supercell_graphs(args.data, args.supercells)
        databases[f"{big.num_rows // 2} supercells (400-1,000 atoms) + as many small"] = big
    print(f"featurized in {time.perf_counter() - started:.1f} s")
    model = InferenceModel(random_model(args.shared_convs))
    settings = {f"count {args.batch}": Batching(crystals=args.batch)}
    settings.update({f"atoms {b}": Batching(atoms=b) for b in args.budgets})
    for name, graphs in databases.items():
        atoms = atom_counts(graphs)
        print(f"\n=== {name}: {graphs.num_rows} crystals, {atoms.sum()} atoms (max {atoms.max()}) ===")
        with torch.inference_mode():  # warm-up here: lazy initialisations would count in every child's peak
            model(collate_arrow(graphs.slice(0, args.batch)))
        runs = {s: [] for s in settings}
        for _ in range(args.repeats):
            for setting, batching in settings.items():
                runs[setting].append(forward_pass(model, graphs, batching))
        base = graphs.num_rows / min(t for t, _ in runs[f"count {args.batch}"])
        for setting, batching in settings.items():
            cuts = batching.cuts(atoms)
            largest = max(atoms[a:b].sum() for a, b in pairwise(cuts))
            rate = graphs.num_rows / min(t for t, _ in runs[setting])
            print(
                f"{setting:>12}: {rate:7.0f} crystals/s ({rate / base:.2f}x count), {len(cuts) - 1:4d} batches, "
                f"largest {largest:6d} atoms, peak RSS +{max(m for _, m in runs[setting]):6.0f} MiB"
            )


def compare_precision(args) -> None:
    """The shipped model in float32 against bfloat16 convolutions: test MAE of each, |delta|, crystals/s."""
    bundle = ModelBundle.load(model_folder("mp36k-mt3"))
    split = load_config(TrainConfig, ROOT / "configs" / "mt3.yaml").split  # what its model card says it used
    rows = [json.loads(line) for line in first_lines(args.data, args.n)]
    codes = split_codes([r["id"] for r in rows], split.val, split.test, split.seed)
    rows = [r for r, code in zip(rows, codes, strict=True) if code == TEST]
    started = time.perf_counter()
    graphs = featurized(rows)
    seconds = time.perf_counter() - started
    print(f"{graphs.num_rows} test crystals of the first {args.n} (featurized in {seconds:.1f} s)")
    cuts = Batching(atoms=4096).cuts(atom_counts(graphs))
    batches = [collate_arrow(graphs.slice(a, b - a)) for a, b in pairwise(cuts)]
    model = bundle.build().eval()
    paths = {"float32": InferenceModel(model), "bfloat16": InferenceModel(model, torch.bfloat16)}
    outputs = {name: [] for name in paths}

    def keep(out):
        for name, o in out.items():
            outputs[name].append(model.to_physical(o, bundle.mean, bundle.std))

    seconds = time_paths(paths, batches, args.repeats, keep)
    labels = {r["id"]: r for r in rows}
    ids = graphs.column("id").to_pylist()
    n_per_pass = len(batches)
    for k, task in enumerate(bundle.task_names):
        truth = np.array([labels[i][task] for i in ids], dtype=np.float64)
        got = {name: torch.cat(o[:n_per_pass])[:, k].double().numpy() for name, o in outputs.items()}
        mae = {name: np.nanmean(np.abs(g - truth)) for name, g in got.items()}
        delta = np.abs(got["bfloat16"] - got["float32"])
        print(
            f"{task:>26}: test MAE float32 {mae['float32']:.4f}, bfloat16 {mae['bfloat16']:.4f} "
            f"({mae['bfloat16'] / mae['float32'] - 1:+.2%}); |delta| mean {delta.mean():.4f}, max {delta.max():.4f}"
        )
    rate = {name: graphs.num_rows / min(s) for name, s in seconds.items()}
    for name in paths:
        print(f"{name:>9}: {rate[name]:8.0f} crystals/s  (passes: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"ratio bfloat16 / float32: {rate['bfloat16'] / rate['float32']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batch-atoms", type=int, default=None, help="pack batches to this many atoms instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared-convs", type=int, default=None)
    parser.add_argument("--shipped", action="store_true", help="time the shipped mp36k-mt3 model, not a random one")
    parser.add_argument("--work", action="store_true", help="count batches vs batches packed by atoms")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--supercells", type=int, default=64)
    parser.add_argument("--precision", action="store_true", help="float32 vs bfloat16 on the shipped model")
    add_data_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()}")
    if args.work or args.precision:
        (compare_batching if args.work else compare_precision)(args)
        print(f"load average at end {os.getloadavg()}")
        return

    started = time.perf_counter()
    graphs = graphs_of(args.data, args.n)
    batching = Batching(atoms=args.batch_atoms, crystals=args.batch)
    batches = [collate_arrow(graphs.slice(a, b - a)) for a, b in pairwise(batching.cuts(atom_counts(graphs)))]
    n_atoms = sum(b.atomic_numbers.numel() for b in batches)
    n_edges = sum(b.edge_src.numel() for b in batches)
    print(
        f"{graphs.num_rows} crystals, {n_atoms} atoms, {n_edges} edges in {len(batches)} batches "
        f"(featurized in {time.perf_counter() - started:.1f} s)"
    )

    if args.shipped:
        model = ModelBundle.load(model_folder("mp36k-mt3")).build().eval()
    else:
        model = random_model(args.shared_convs)
    frozen = InferenceModel(model)
    paths = {
        "eval": lambda b: model(b),
        "gathers": InferenceModel(model, regular_edges=False, exp_gate=False, orbits=False),
        "softplus": InferenceModel(model, exp_gate=False, orbits=False),
        "atoms": InferenceModel(model, orbits=False),
        "inference": frozen,
    }
    n_orbits = sum(frozen.orbit_batch(b).batch.atomic_numbers.numel() for b in batches)
    print(f"orbit batches: {n_orbits} atoms, {n_atoms / n_orbits:.2f}x fewer than the crystals' {n_atoms}")
    diff = scale = 0.0

    def compare(outputs):
        nonlocal diff, scale
        for frozen_path in ("gathers", "softplus", "atoms", "inference"):
            diff = max(diff, (outputs["eval"] - outputs[frozen_path]).abs().max().item())
        scale = max(scale, outputs["eval"].abs().max().item())

    with torch.no_grad():
        seconds = time_paths(paths, batches, args.repeats, compare)

    rate = {name: graphs.num_rows / min(s) for name, s in seconds.items()}
    kind = "the shipped mp36k-mt3" if args.shipped else f"a random 3-task model, shared_convs={args.shared_convs}"
    print(f"model: {kind}, {model.n_parameters()} parameters, 1 thread")
    for name in paths:
        print(f"{name:>9}: {rate[name]:8.0f} crystals/s  (passes: {', '.join(f'{s:.2f}' for s in seconds[name])} s)")
    print(f"ratio inference / eval: {rate['inference'] / rate['eval']:.2f}x")
    print(f"ratio softplus / gathers (regular edges broadcast, reshaped): {rate['softplus'] / rate['gathers']:.2f}x")
    print(f"ratio atoms / softplus (one exp for the gate: gate_): {rate['atoms'] / rate['softplus']:.2f}x")
    print(f"ratio inference / atoms (orbit batches): {rate['inference'] / rate['atoms']:.2f}x")
    print(f"ratio inference / gathers (all three): {rate['inference'] / rate['gathers']:.2f}x")
    print(f"max |delta| {diff:.2e}, max |output| {scale:.1f}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
