"""Training-step throughput: CGCNN's original batching and conv vs mtc's collate_arrow + MultiTaskCGCNN.

(a) baseline, re-implemented here after CGCNN's design: per-crystal padded neighbour arrays of width 12,
    Gaussian-expanded (n, 12, 41) edge features built with numpy on the CPU for every batch, a conv whose
    Linear runs over the concatenation [v_i || v_j || u_ij] of every (atom, slot), and mean pooling by a
    Python loop over crystals.
(b) mtc: Arrow rows -> collate_arrow -> MultiTaskCGCNN (one formation-energy task, split conv,
    index_add_ pooling) -> MultiTaskLoss.
(c) (b) with its convolutions compiled (``compile: true`` in a training config: torch.compile fuses each
    convolution's per-edge work); same initial weights as (b), its compile time printed, not timed per step.
(d) (c) in bfloat16 mixed precision (``precision: bfloat16``: the convolutions autocast to bfloat16, weights, sums,
    heads and loss in float32): fast where the CPU has AMX or AVX512-BF16 (printed), slow where it has neither.
(e) (c) on orbit batches (``orbit_batches: true``, ``mtc.model.orbits``: each set of atoms no convolution tells
    apart computed once, weighted in pooling and BatchNorm), float32; building the orbit batch is timed in the step.

Both: CGCNN defaults (atom_fea_len 64, h_fea_len 128, n_conv 3, n_h 1), batch 256, Adam lr 0.01, MSE on
z-scored formation energy, one process, the same crystals in the same order. Graph building happens before
timing and is not measured. Run: ``python benchmarks/bench_train_step.py [--n 2000] [--data PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from bench_data import add_data_option, first_lines
from pymatgen.core import Lattice, Structure
from torch import nn
from torch.nn import functional as F

from mtc.data.batching import collate_arrow
from mtc.elements import element_table
from mtc.model.cgcnn import compile_convolutions
from mtc.model.losses import MultiTaskLoss
from mtc.model.multitask import MultiTaskCGCNN
from mtc.model.orbits import orbit_batch
from mtc.tasks import TaskSpec
from mtc.train.loop import LossModule

RADIUS, MAX_NBR, DMIN, DMAX, STEP = 8.0, 12, 0.0, 8.0, 0.2
ATOM_FEA, H_FEA, N_CONV = 64, 128, 3
TARGET = "formation_energy_per_atom"


# ----------------------------------------------------------------------------- graphs (untimed)


def load_graphs(path: Path, n: int) -> list[dict]:
    """First ``n`` crystals of a JSONL file as graphs: the 12 nearest neighbours within 8 Å per atom."""
    graphs = []
    for line in first_lines(path, n):
        row = json.loads(line)
        structure = Structure(Lattice(row["lattice"]), row["species"], row["frac_coords"])
        centres, points, _, dists = structure.get_neighbor_list(RADIUS)
        order = np.lexsort((dists, centres))
        centres, points, dists = centres[order], points[order], dists[order]
        keep = np.arange(centres.size) - np.searchsorted(centres, centres) < MAX_NBR
        graphs.append(
            {
                "id": row["id"],
                "atomic_numbers": np.array([site.specie.Z for site in structure], dtype=np.int8),
                "edge_src": points[keep].astype(np.int32),
                "edge_dst": centres[keep].astype(np.int32),
                "edge_dist": dists[keep].astype(np.float32),
                TARGET: float(row[TARGET]),
            }
        )
    return graphs


def padded_neighbours(graph: dict) -> tuple[np.ndarray, np.ndarray]:
    """CGCNN layout: (n, 12) neighbour indices and distances, padded with index 0 and distance radius + 1."""
    n = len(graph["atomic_numbers"])
    idx = np.zeros((n, MAX_NBR), dtype=np.int64)
    dist = np.full((n, MAX_NBR), RADIUS + 1.0)
    dst = graph["edge_dst"]  # sorted by centre, then distance
    slot = np.arange(dst.size) - np.searchsorted(dst, dst)
    idx[dst, slot] = graph["edge_src"]
    dist[dst, slot] = graph["edge_dist"]
    return idx, dist


# ----------------------------------------------------------------------------- (a) CGCNN-style baseline


class OriginalConv(nn.Module):
    """Gated conv with the Linear over the (N, 12, 2F+G) concatenation."""

    def __init__(self, f: int, g: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * f + g, 2 * f)
        self.bn1 = nn.BatchNorm1d(2 * f)
        self.bn2 = nn.BatchNorm1d(f)

    def forward(self, atom: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
        n, m = nbr_idx.shape
        f = atom.shape[1]
        z = torch.cat([atom.unsqueeze(1).expand(n, m, f), atom[nbr_idx], nbr_fea], dim=2)
        gated = self.bn1(self.fc_full(z).view(-1, 2 * f)).view(n, m, 2 * f)
        filt, core = gated.chunk(2, dim=2)
        summed = (torch.sigmoid(filt) * F.softplus(core)).sum(dim=1)
        return F.softplus(atom + self.bn2(summed))


class OriginalCGCNN(nn.Module):
    """Embedding -> convs -> per-crystal Python mean-pooling loop -> softplus/Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Linear(92, ATOM_FEA)
        self.convs = nn.ModuleList(OriginalConv(ATOM_FEA, 41) for _ in range(N_CONV))
        self.conv_to_fc = nn.Linear(ATOM_FEA, H_FEA)
        self.fc_out = nn.Linear(H_FEA, 1)

    def forward(
        self,
        atom_fea: torch.Tensor,
        nbr_fea: torch.Tensor,
        nbr_idx: torch.Tensor,
        crystal_atom_idx: list[torch.Tensor],
    ) -> torch.Tensor:
        atom = self.embedding(atom_fea)
        for conv in self.convs:
            atom = conv(atom, nbr_fea, nbr_idx)
        pooled = torch.cat([atom[idx].mean(dim=0, keepdim=True) for idx in crystal_atom_idx], dim=0)
        return self.fc_out(F.softplus(self.conv_to_fc(F.softplus(pooled)))).squeeze(-1)


def original_collate(
    graphs: list[dict], padded: list[tuple[np.ndarray, np.ndarray]], table: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per crystal: element lookup and (n, 12, 41) Gaussian expansion in numpy, then CGCNN's collate_pool."""
    centres = np.arange(DMIN, DMAX + STEP, STEP)
    atom_fea, nbr_fea, nbr_idx, crystal_atom_idx, base = [], [], [], [], 0
    for graph, (idx, dist) in zip(graphs, padded, strict=True):
        n = idx.shape[0]
        atom_fea.append(torch.from_numpy(table[graph["atomic_numbers"]]))
        nbr_fea.append(torch.from_numpy(np.exp(-((dist[..., None] - centres) ** 2) / STEP**2).astype(np.float32)))
        nbr_idx.append(torch.from_numpy(idx + base))
        crystal_atom_idx.append(torch.arange(base, base + n))
        base += n
    return torch.cat(atom_fea), torch.cat(nbr_fea), torch.cat(nbr_idx), crystal_atom_idx


# ----------------------------------------------------------------------------- timing


def interleaved_step_times(
    steps: dict[str, Callable[[int], float]], n_batches: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per training step of each variant, alternating variants batch by batch (after a warm-up step).

    Alternating exposes both variants to the same background load on a shared machine.
    """
    for step in steps.values():
        step(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for b in range(n_batches):
            for name, step in steps.items():
                start = time.perf_counter()
                step(b)
                times[name].append(time.perf_counter() - start)
    return times


def bf16_cpu() -> str:
    """Which bfloat16 instructions this CPU has (Linux), as (d)'s speed depends on them."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "CPU flags unknown"
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return "CPU has " + " and ".join(found) if found else "CPU has no bfloat16 instructions: (d) is emulated"


def matmul_gflops(m: int, k: int, n: int, repeats: int = 15) -> float:
    """Median GFLOP/s of a plain (m x k) @ (k x n) float32 matmul."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def same_function_check(
    model: MultiTaskCGCNN,
    base_model: OriginalCGCNN,
    graphs: list[dict],
    padded: list[tuple[np.ndarray, np.ndarray]],
    shard: pa.Table,
    tasks: list[TaskSpec],
    table: np.ndarray,
) -> None:
    """Loads mtc's weights into the baseline and compares eval-mode outputs on crystals with no padding."""
    mapping = {
        "trunks.0.embedding": "embedding",
        "heads.0.mlp.1": "conv_to_fc",
        "heads.0.mlp.3": "fc_out",
        "trunks.0.convs": "convs",
    }
    state = {}
    for key, value in model.state_dict().items():
        for old, new in mapping.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = value
    base_model.load_state_dict(state)
    model.eval()
    base_model.eval()
    with torch.no_grad():
        ours = model(collate_arrow(shard, tasks))[:, 0]
        theirs = base_model(*original_collate(graphs, padded, table))
    full = torch.tensor([len(g["edge_src"]) == MAX_NBR * len(g["atomic_numbers"]) for g in graphs])
    diff = (ours - theirs)[full].abs().max().item()
    print(f"same function: max |b - a| = {diff:.2e} over {int(full.sum())} crystals without padded slots")
    model.train()
    base_model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of crystals")
    add_data_option(parser)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the data")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--flush-denormals",
        action="store_true",
        help="torch.set_flush_denormal(True) for both (CGCNN's float32 edge features hold denormals)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormals)
    torch.manual_seed(0)
    bs = args.batch_size

    path = args.data
    start = time.perf_counter()
    graphs = load_graphs(path, args.n)
    rng = np.random.default_rng(0)
    graphs = [graphs[i] for i in rng.permutation(len(graphs))]
    n_batches = len(graphs) // bs
    if n_batches == 0:
        raise SystemExit(f"need at least one full batch: --n {args.n} < --batch-size {bs}")
    padded = [padded_neighbours(g) for g in graphs]
    shard = pa.Table.from_pylist(
        [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in g.items()} for g in graphs],
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("atomic_numbers", pa.list_(pa.int8())),
                ("edge_src", pa.list_(pa.int32())),
                ("edge_dst", pa.list_(pa.int32())),
                ("edge_dist", pa.list_(pa.float32())),
                (TARGET, pa.float64()),
            ]
        ),
    )
    n_atoms = sum(len(g["atomic_numbers"]) for g in graphs[: n_batches * bs])
    n_edges = sum(len(g["edge_src"]) for g in graphs[: n_batches * bs])
    n_padded = sum(p[0].size for p in padded[: n_batches * bs])
    build_s = time.perf_counter() - start
    print(f"data: {path} | {len(graphs)} crystals | graphs built in {build_s:.1f} s, untimed")
    print(
        f"timed: {n_batches} batches of {bs} x {args.rounds} passes, variants alternating step by step | "
        f"{args.threads} threads, flush denormals {args.flush_denormals}, torch {torch.__version__} | "
        f"per batch {n_atoms / n_batches:.0f} atoms, "
        f"{n_edges / n_batches:.0f} edges"
    )

    targets = np.array([g[TARGET] for g in graphs], dtype=np.float32)
    mean, std = float(targets.mean()), float(targets.std())
    table = element_table()

    # (a)
    base_model = OriginalCGCNN()
    base_opt = torch.optim.Adam(base_model.parameters(), lr=0.01)
    base_targets = torch.from_numpy((targets - mean) / std)

    def base_step(b: int) -> float:
        sl = slice(b * bs, (b + 1) * bs)
        inputs = original_collate(graphs[sl], padded[sl], table)
        loss = F.mse_loss(base_model(*inputs), base_targets[sl])
        base_opt.zero_grad()
        loss.backward()
        base_opt.step()
        return loss.item()

    # (b)
    tasks = [TaskSpec(name=TARGET, unit="eV/atom")]
    model = MultiTaskCGCNN(tasks, atom_fea_len=ATOM_FEA, h_fea_len=H_FEA, n_conv=N_CONV, n_h=1)
    criterion = MultiTaskLoss(tasks, mean=[mean], std=[std])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def training_step(
        net: MultiTaskCGCNN, optimiser: torch.optim.Optimizer, precision: str = "float32", orbits: bool = False
    ) -> Callable[[int], float]:
        objective = LossModule(net, criterion, precision)

        def step(b: int) -> float:
            batch = collate_arrow(shard.slice(b * bs, bs), tasks)
            batch = orbit_batch(batch, N_CONV, min_saving=0.0) if orbits else batch
            loss = objective(batch).total
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            return loss.item()

        return step

    same_function_check(model, base_model, graphs[:bs], padded[:bs], shard.slice(0, bs), tasks, table)
    fused = copy.deepcopy(model)
    compile_convolutions(fused)
    mtc_step = training_step(model, opt)
    fused_step = training_step(fused, torch.optim.Adam(fused.parameters(), lr=0.01))
    mixed = copy.deepcopy(model)
    compile_convolutions(mixed)
    mixed_step = training_step(mixed, torch.optim.Adam(mixed.parameters(), lr=0.01), "bfloat16")
    orbiting = copy.deepcopy(model)
    compile_convolutions(orbiting)
    orbit_step = training_step(orbiting, torch.optim.Adam(orbiting.parameters(), lr=0.01), orbits=True)
    for name, step in (("c", fused_step), ("d", mixed_step), ("e", orbit_step)):
        start = time.perf_counter()
        step(n_batches - 1)
        step(0)
        print(f"({name}) compile: first two steps {time.perf_counter() - start:.1f} s (two batch shapes), untimed")

    steps = {"a": base_step, "b": mtc_step, "c": fused_step, "d": mixed_step, "e": orbit_step}
    times = interleaved_step_times(steps, n_batches, args.rounds)
    base_rate = bs / statistics.median(times["a"])
    mtc_rate = bs / statistics.median(times["b"])
    fused_rate = bs / statistics.median(times["c"])
    mixed_rate = bs / statistics.median(times["d"])
    orbit_rate = bs / statistics.median(times["e"])
    orbit_atoms = sum(
        orbit_batch(collate_arrow(shard.slice(b * bs, bs), tasks), N_CONV, 0.0).atomic_numbers.numel()
        for b in range(n_batches)
    )

    f, g, h = ATOM_FEA, 41, H_FEA
    head_macs = bs * (f * h + h)
    base_macs = (n_padded * 92 * f + N_CONV * n_padded * (2 * f + g) * 2 * f) / n_batches + head_macs
    mtc_macs = (n_atoms * 92 * f + N_CONV * (n_atoms * f * 4 * f + n_edges * g * 2 * f)) / n_batches + head_macs
    base_gflops = 3 * 2 * base_macs * base_rate / bs / 1e9
    mtc_gflops = 3 * 2 * mtc_macs * mtc_rate / bs / 1e9
    edges_per_batch = n_edges // n_batches
    mm_conv = matmul_gflops(edges_per_batch, 2 * f + g, 2 * f)
    mm_square = matmul_gflops(2048, 2048, 2048, repeats=5)

    print(f"(a) CGCNN-style baseline: {base_rate:8.1f} crystals/s")
    print(f"(b) mtc                 : {mtc_rate:8.1f} crystals/s")
    print(f"speed-up b/a            : {mtc_rate / base_rate:8.2f}x")
    print(f"(c) mtc, convs compiled : {fused_rate:8.1f} crystals/s")
    print(f"speed-up c/b            : {fused_rate / mtc_rate:8.2f}x   (c/a {fused_rate / base_rate:.2f}x)")
    print(f"(d) (c) in bfloat16 mixed: {mixed_rate:8.1f} crystals/s")
    print(f"speed-up d/b            : {mixed_rate / mtc_rate:8.2f}x   (d/c {mixed_rate / fused_rate:.2f}x)")
    print(f"(e) (c) on orbit batches: {orbit_rate:8.1f} crystals/s  ({n_atoms / orbit_atoms:.2f}x fewer atoms)")
    print(f"speed-up e/b            : {orbit_rate / mtc_rate:8.2f}x   (e/c {orbit_rate / fused_rate:.2f}x)")
    print(f"bfloat16                : {bf16_cpu()}")
    for name in steps:
        ms = np.percentile(np.array(times[name]) * 1e3, [10, 50, 90])
        print(f"step time {name}: p10 {ms[0]:.0f} ms, median {ms[1]:.0f} ms, p90 {ms[2]:.0f} ms")
    print(
        f"model arithmetic (fwd+bwd ~ 3x fwd): (a) {3 * 2 * base_macs / 1e9:.2f} GFLOP/step -> "
        f"{base_gflops:.1f} GFLOP/s; (b) {3 * 2 * mtc_macs / 1e9:.2f} GFLOP/step -> {mtc_gflops:.1f} GFLOP/s; "
        f"(c) {mtc_gflops * fused_rate / mtc_rate:.1f} GFLOP/s; (d) {mtc_gflops * mixed_rate / mtc_rate:.1f} GFLOP/s"
    )
    print(
        f"plain torch matmul: ({edges_per_batch}x{2 * f + g})@({2 * f + g}x{2 * f}) {mm_conv:.1f} GFLOP/s; "
        f"2048^3 {mm_square:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
