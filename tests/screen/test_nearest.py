"""Nearest neighbours in embedding space, chunked, against a brute-force sort of every distance (no Ray)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtc.predict.predictor import EMBEDDING_SCHEMA
from mtc.screen.embed import STATE, chunks, similar
from mtc.screen.nearest import distances, nearest
from mtc.screen.output import EMBEDDINGS
from mtc.screen.score import ScreenError

RNG = np.random.default_rng(7)
IDS = np.array([f"c{i:03d}" for i in range(200)], dtype=object)
VECTORS = RNG.gamma(2.0, 1.0, size=(200, 6)).astype(np.float32)  # positive, as softplus means are


def brute_force(query: np.ndarray, k: int, metric: str, exclude: str | None = None) -> list[tuple[str, float]]:
    q = query.astype(np.float64)
    x = VECTORS.astype(np.float64)
    if metric == "euclidean":
        d = np.linalg.norm(x - q, axis=1)
    else:
        d = 1 - x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    order = [i for i in np.argsort(d, kind="stable") if IDS[i] != exclude][:k]
    return [(IDS[i], d[i]) for i in order]


def split(sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    edges = np.cumsum([0, *sizes])
    return [(IDS[a:b], VECTORS[a:b]) for a, b in pairwise(edges)]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_top_k_is_the_brute_force_top_k(metric: str) -> None:
    queries = np.stack([VECTORS[17], RNG.gamma(2.0, 1.0, 6).astype(np.float32)])
    found = nearest(queries, split([7, 1, 60, 0, 132]), k=5, metric=metric, exclude=["c017", None])
    for query, exclude, got in zip(queries, ["c017", None], found, strict=True):
        expected = brute_force(query, 5, metric, exclude)
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([d for _, d in got], [d for _, d in expected], rtol=1e-9, atol=1e-9)
    assert found[1][0][1] > 0 and all(i != "c017" for i, _ in found[0])  # a query row is never its own neighbour


def test_k_beyond_the_table_returns_every_other_row() -> None:
    found = nearest(VECTORS[:1], split([150, 50]), k=500, exclude=["c000"])[0]
    assert len(found) == 199 and [d for _, d in found] == sorted(d for _, d in found)


def test_distances_match_their_definitions() -> None:
    q, x = VECTORS[:3], VECTORS[3:9]
    direct = np.linalg.norm(x[None, :, :].astype(np.float64) - q[:, None, :], axis=2)
    np.testing.assert_allclose(distances(q, x), direct, rtol=1e-9, atol=1e-9)
    cos = distances(q, x, "cosine")
    assert cos.shape == (3, 6) and np.all((cos >= 0) & (cos <= 2))
    np.testing.assert_allclose(distances(q, 2.5 * q, "cosine").diagonal(), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        distances(q, x, "manhattan")


def write_embedding_folder(folder: Path, sizes: list[int]) -> Path:
    """An `mtc embed` output as the actors write it: parts of (id, embedding, a key column) and embed.json."""
    (folder / EMBEDDINGS).mkdir(parents=True)
    for n, (ids, vectors) in enumerate(split(sizes)):
        embedding = pa.array([v.tolist() for v in vectors], pa.list_(pa.float32()))
        table = pa.Table.from_arrays([pa.array(list(ids), pa.string()), embedding], schema=EMBEDDING_SCHEMA)
        table = table.append_column("formula", pa.array([f"formula of {i}" for i in ids], pa.string()))
        pq.write_table(table, folder / EMBEDDINGS / f"part-{n:04d}.parquet")
    (folder / STATE).write_text(json.dumps({"model": "models:/m/1", "task": None}))
    return folder


def test_similar_reads_an_embedding_folder_a_chunk_at_a_time(tmp_path: Path) -> None:
    folder = write_embedding_folder(tmp_path / "emb", [90, 0, 64, 46])
    read = list(chunks(folder, rows=50))
    assert np.array_equal(np.concatenate([ids for ids, _ in read]), IDS)
    assert np.array_equal(np.concatenate([vectors for _, vectors in read]), VECTORS)
    assert all(50 <= len(ids) < 100 for ids, _ in read[:-1])  # memory bound: under two chunks' rows at a time
    table = similar(folder, "c120", k=4, rows=50)
    expected = brute_force(VECTORS[120], 4, "euclidean", exclude="c120")
    assert table.column("id").to_pylist() == [i for i, _ in expected]
    assert table.column("rank").to_pylist() == [1, 2, 3, 4] and set(table.column("query").to_pylist()) == {"c120"}
    assert table.column("formula").to_pylist() == [f"formula of {i}" for i, _ in expected]  # the key columns
    np.testing.assert_allclose(table.column("distance").to_numpy(), [d for _, d in expected], rtol=1e-6)
    with pytest.raises(ScreenError, match="neither a structure file nor an id"):
        similar(folder, "mp-nowhere")
    with pytest.raises(ScreenError, match="not an `mtc embed` output folder"):
        similar(tmp_path, "c120")
