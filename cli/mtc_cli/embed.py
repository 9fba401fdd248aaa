"""``mtc embed`` and ``mtc similar``: crystal embeddings of a database, and the crystals nearest to a query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtc_cli.common import WORKERS_HELP, EngineKind, console, engine_help, progress, user_errors
from mtc_cli.common import engine as engine_of
from mtc_cli.screen import DB_HELP, MODEL_HELP, BatchAtoms, BatchSize, batching, write_table


def embed(
    db: Annotated[
        Path,
        typer.Argument(help=DB_HELP + " Its other scalar columns (a formula, labels) are kept beside each vector."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (embeddings/, rejected/, embed.json).")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "models:/mtc@champion",
    task: Annotated[
        str | None,
        typer.Option(
            help="Embed only the vector this task's head reads (its task group); default: every group's, "
            "concatenated in group order (a model with one shared trunk has one group)."
        ),
    ] = None,
    batch_atoms: BatchAtoms = None,
    batch_size: BatchSize = None,
    workers: Annotated[int | None, typer.Option(min=1, help=WORKERS_HELP)] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address.")] = None,
    engine: Annotated[EngineKind, typer.Option(help=engine_help("screen"))] = EngineKind.auto,
) -> None:
    """Write the crystal embedding (the pooled vector the model's heads read) of every structure, through Ray Data
    (a small database: in this process).

    Every input id ends up exactly once: in OUT/embeddings (id, embedding: list<float32>) or in OUT/rejected (with
    the reason). An interrupted run continues where it stopped when run again. Then: mtc similar OUT ID.

    Example: mtc embed db.parquet -o emb --model models:/mtc@champion
    """
    from mtc import tracking
    from mtc.screen.embed import embed as run_embed

    forward = batching(batch_atoms, batch_size)  # a usage error before Ray starts
    with user_errors():
        tracking.configure()
        where = engine_of(engine, address, {"DB": db, "--out": out})
        with progress("embed") as update:
            summary = run_embed(db, model, out, task, forward, workers=workers, on_progress=update, engine=where)
        reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected_by_reason.items())
        console.print(
            f"model {summary.model}: {summary.n_input:,} structures, {summary.n_scored:,} embedded, "
            f"{summary.n_rejected:,} rejected"
            + (f" ({reasons})" if reasons else "")
            + f"; {summary.throughput:,.0f} structures/s"
        )
        if summary.n_resumed_units:
            console.print(f"resumed: {summary.n_resumed_units} finished part(s) of an earlier run were kept")
        console.print(f"output: {summary.out}/embeddings (Parquet dataset), rejected/")


def similar(
    emb: Annotated[Path, typer.Argument(help="An `mtc embed` output folder.")],
    query: Annotated[
        str,
        typer.Argument(
            help="An id in EMB, or a structure file (CIF, POSCAR, extended XYZ, JSON, ...) embedded with EMB's model."
        ),
    ],
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours to show per query structure.")] = 10,
    metric: Annotated[
        str,
        typer.Option(help="euclidean (default: close vectors give close predictions from every head) or cosine."),
    ] = "euclidean",
    out: Annotated[Path | None, typer.Option(help="Also write the table (.parquet or .csv).")] = None,
) -> None:
    """The k crystals of an embedded database nearest to a query, in the model's crystal-vector space.

    A query id is left out of its own neighbours. A query file may hold several structures (every frame of an
    extended XYZ file): each gets its k neighbours. Reads EMB a chunk at a time, so memory stays flat.

    Example: mtc similar emb mp-149 -k 5; mtc similar emb Si.cif --metric cosine --out nn.parquet
    """
    from mtc.screen.embed import SIMILAR_SCHEMA
    from mtc.screen.embed import similar as find_similar
    from mtc.screen.nearest import METRICS

    with user_errors():
        if metric not in METRICS:
            raise typer.BadParameter(f"{metric!r}: choose {' or '.join(METRICS)}", param_hint="--metric")
        found = find_similar(emb, query, k, metric)
        queries = set(found.column("query").to_pylist())
        table = Table(title=f"{k} nearest to {query} in {emb} ({metric} distance)")
        keys = found.column_names[len(SIMILAR_SCHEMA) :]  # the database's own columns (a formula, labels...)
        columns = (["query"] if len(queries) > 1 else []) + ["rank", "id", *keys, "distance"]
        for name in columns:
            table.add_column(name, justify="left" if name in ("query", "id") else "right")
        for row in found.to_pylist():
            table.add_row(*(_cell(row[c]) for c in columns))
        console.print(table)
        if out is not None:
            write_table(found, out)
            console.print(f"wrote {out}")


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
