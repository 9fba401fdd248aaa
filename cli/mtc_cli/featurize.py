"""``mtc featurize``: structures -> Parquet graph shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtc_cli.common import EngineKind, console, engine_help, progress, user_errors
from mtc_cli.common import engine as engine_of


def featurize(
    src: Annotated[
        Path,
        typer.Argument(
            help="Structures: a CIF folder with id_prop.csv, a .jsonl/.jsonl.gz file, Parquet (file or folder), "
            "extended XYZ (.xyz, .extxyz), POSCAR/CONTCAR (file or folder) or an ASE database (.db)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the graph shards.")],
    radius: Annotated[float, typer.Option(help="Neighbour cut-off in Å (CGCNN: 8).")] = 8.0,
    max_neighbors: Annotated[int, typer.Option(help="Nearest neighbours kept per atom (CGCNN: 12).")] = 12,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            help="Label column (or atoms.info / key_value_pairs key) to keep (repeatable). Default: every numeric one.",
        ),
    ] = None,
    max_atoms: Annotated[int, typer.Option(help="Reject cells with more atoms than this.")] = 1000,
    max_reject_rate: Annotated[
        float, typer.Option(help="Exit non-zero when more than this fraction of structures is rejected.")
    ] = 0.2,
    workers: Annotated[int | None, typer.Option(help="Featurizer actors (default: one per CPU).")] = None,
    address: Annotated[
        str | None,
        typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address; default: an embedded local Ray."),
    ] = None,
    engine: Annotated[EngineKind, typer.Option(help=engine_help("featurize"))] = EngineKind.auto,
) -> None:
    """Turn structures with labels into Parquet graph shards with Ray Data (a small input: in this process).

    Each atom is joined to its MAX_NEIGHBORS nearest periodic neighbours within RADIUS. Structures
    that cannot be used go to OUT/rejected.parquet with a reason; the rest are never lost. Running
    again with the same inputs and parameters reuses the shards.

    Examples: mtc featurize data/demo/mp_demo.jsonl.gz --out shards/demo;
    mtc featurize relax.extxyz --out shards/relax --label energy
    """
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize as run_featurize

    with user_errors():
        config = FeaturizeConfig(
            radius=radius, max_neighbors=max_neighbors, max_atoms=max_atoms, max_reject_rate=max_reject_rate
        )
        where = engine_of(engine, address, {"SRC": src, "--out": out})  # workers read the input on every node
        with progress("featurize") as update:
            summary = run_featurize(src, out, config, labels=label, workers=workers, on_progress=update, engine=where)
        print_summary(summary)


def print_summary(summary) -> None:
    """Counts, rejection reasons, throughput and where things went."""
    if summary.reused:
        console.print(f"[green]reused[/] the shards in {summary.out}: same inputs and parameters as before")
    table = Table(show_header=False, box=None)
    table.add_row("read", f"{summary.n_read:,}")
    table.add_row("written", f"{summary.n_written:,}")
    table.add_row("rejected", f"{summary.n_rejected:,}")
    for reason, count in sorted(summary.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{count:,}")
    if not summary.reused:
        table.add_row("throughput", f"{summary.throughput:,.0f} structures/s ({summary.seconds:.1f} s)")
    console.print(table)
    console.print(f"shards: {summary.out}  (manifest.json, rejected.parquet beside them)")
