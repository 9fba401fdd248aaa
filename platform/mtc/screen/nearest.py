"""The k nearest rows of an embedding table to a few query vectors, one chunk at a time (pure numpy, no Ray).

Memory stays flat whatever the table's size: a chunk's (Q, n) distances and the k best so far per query are all
that is held. Distances are computed in float64 from float32 embeddings.

Metrics:
- ``euclidean`` (the default): ``|x - q|``, in the units the heads read. The heads are Lipschitz functions of the
  embedding (Linear, softplus), so crystals close in this distance get close predictions from every head.
- ``cosine``: ``1 - cos(x, q)``, in [0, 2]; blind to the vector's length. The embeddings are means of softplus
  outputs, all positive, so their cosines crowd near 1 (random mp36k pairs: 0.99 on average) and the distances
  are small numbers; measured (``benchmarks/bench_embed.py``), the 10 nearest neighbours agree on the labels as
  well under either metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

METRICS = ("euclidean", "cosine")


def distances(queries: np.ndarray, vectors: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Args: queries (Q, D), vectors (n, D). Returns: (Q, n) float64 distances under ``metric``."""
    q = np.asarray(queries, np.float64)
    x = np.asarray(vectors, np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        return np.clip(1.0 - q @ x.T, 0.0, 2.0)
    if metric != "euclidean":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    squared = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * (q @ x.T)
    return np.sqrt(np.maximum(squared, 0.0))


def nearest(
    queries: np.ndarray,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
    metric: str = "euclidean",
    exclude: Sequence[str | None] | None = None,
) -> list[list[tuple[str, float]]]:
    """The k rows closest to each query, over every chunk.

    Args:
        queries: (Q, D).
        chunks: (ids (n,), vectors (n, D)) pairs, the table in any chunking.
        k: Neighbours per query.
        metric: ``euclidean`` or ``cosine``.
        exclude: Q ids (or None), each left out of its own query's neighbours (a query that is a row of the table).

    Returns:
        Per query, up to k ``(id, distance)``, closest first.
    """
    n_queries = len(queries)
    skip = np.asarray(exclude if exclude is not None else [None] * n_queries, dtype=object)[:, None]
    best_d = np.zeros((n_queries, 0))
    best_ids = np.zeros((n_queries, 0), dtype=object)
    for ids, vectors in chunks:
        ids = np.asarray(ids, dtype=object)
        d = distances(queries, vectors, metric)
        d[ids[None, :] == skip] = np.inf
        cand_d = np.concatenate([best_d, d], axis=1)
        cand_ids = np.concatenate([best_ids, np.broadcast_to(ids, d.shape)], axis=1)
        keep = min(k, cand_d.shape[1])
        if keep < cand_d.shape[1]:
            top = np.argpartition(cand_d, keep - 1, axis=1)[:, :keep]
            cand_d = np.take_along_axis(cand_d, top, axis=1)
            cand_ids = np.take_along_axis(cand_ids, top, axis=1)
        best_d, best_ids = cand_d, cand_ids
    return [
        sorted(((i, float(d)) for i, d in zip(row_ids, row_d, strict=True) if np.isfinite(d)), key=lambda pair: pair[1])
        for row_ids, row_d in zip(best_ids, best_d, strict=True)
    ]
