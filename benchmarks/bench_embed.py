"""Embedding throughput (``mtc embed``) against screening (``mtc screen``), end to end, same data, same run; then how
well the nearest neighbours in the embedding agree on the labels, Euclidean vs cosine distance.

    .venv/bin/python benchmarks/bench_embed.py [--n 10000] [--queries 500] [--model models:/NAME@ALIAS] [--data PATH]

Without --model, bench_screen's small model is trained first (1 epoch on the demo data, not timed). Structures/s are
end to end: read, featurize, forward, write. Neighbour agreement: for ``--queries`` random crystals (seed 0), the
mean |label difference| to their 10 nearest other crystals, against random pairs.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
from bench_data import first_lines
from bench_screen import arguments, prepare, timed

LABELS = ("formation_energy_per_atom", "band_gap")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    work, model, db, warm = prepare(args, "embed")

    from mtc.screen.embed import chunks, embed
    from mtc.screen.nearest import METRICS, nearest
    from mtc.screen.score import screen

    screen(warm, model, work / "warm-screen")  # start Ray workers and imports
    embed(warm, model, work / "warm-embed")

    seconds = {
        "mtc screen (predictions)": timed(lambda: screen(db, model, work / "screen")),
        "mtc embed (crystal vectors)": timed(lambda: embed(db, model, work / "emb")),
    }
    for out, folder in (("screen", "predictions"), ("emb", "embeddings")):
        assert pq.read_table(work / out / folder).num_rows + pq.read_table(work / out / "rejected").num_rows == args.n
    base = args.n / seconds["mtc screen (predictions)"]
    print(f"\n{args.n:,} structures of {args.data.name}, Parquet in -> Parquet out, model {model}, all CPUs")
    print(f"{'command':30s} {'seconds':>8s} {'structures/s':>13s} {'vs screen':>10s}")
    for stage, s in seconds.items():
        print(f"{stage:30s} {s:8.1f} {args.n / s:13,.0f} {args.n / s / base:9.2f}x")

    labels = {}
    for line in first_lines(args.data, args.n):
        row = json.loads(line)
        labels[row["id"]] = [row.get(name) for name in LABELS]
    ids, vectors = (np.concatenate(parts) for parts in zip(*chunks(work / "emb"), strict=True))
    values = np.array([labels[i] for i in ids], dtype=np.float64)  # (n, len(LABELS))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(ids), size=min(args.queries, len(ids)), replace=False)
    row_of = {cid: r for r, cid in enumerate(ids)}
    print(f"\nneighbour agreement, {len(picked)} queries x 10 nearest other crystals (mean |difference|):")
    print(f"{'pairs':22s} " + " ".join(f"{name:>26s}" for name in LABELS))
    random_pairs = np.nanmean(np.abs(values[picked] - values[rng.choice(len(ids), size=len(picked))]), axis=0)
    print(f"{'random':22s} " + " ".join(f"{v:26.4f}" for v in random_pairs))
    for metric in METRICS:
        found = nearest(vectors[picked], [(ids, vectors)], 10, metric, exclude=list(ids[picked]))
        gaps = [
            np.abs(values[[row_of[c] for c, _ in pairs]] - values[q]) for q, pairs in zip(picked, found, strict=True)
        ]
        mean = np.nanmean(np.concatenate(gaps), axis=0)
        print(f"{metric + ' 10-NN':22s} " + " ".join(f"{v:26.4f}" for v in mean))
    pairs = rng.choice(len(ids), size=(len(picked), 2))
    a, b = vectors[pairs[:, 0]].astype(np.float64), vectors[pairs[:, 1]].astype(np.float64)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(
        f"cosine similarity of random pairs: mean {cosines.mean():.3f}, 5th percentile {np.percentile(cosines, 5):.3f}"
    )
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
