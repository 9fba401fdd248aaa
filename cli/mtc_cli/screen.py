"""``mtc screen`` and ``mtc predict``: score structures with a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtc_cli.common import (
    PRECISION_HELP,
    WORKERS_HELP,
    EngineKind,
    Precision,
    console,
    engine_help,
    progress,
    user_errors,
    warn_emulated_bfloat16,
)
from mtc_cli.common import engine as engine_of
from mtc_cli.tables import print_predictions, with_spread

MODEL_HELP = "Model URI: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/mtc_model."
DB_HELP = (
    "Parquet file or folder of structures ('id' + cif | structure | lattice/species/frac_coords), "
    "or extended XYZ (.xyz, .extxyz), POSCAR/CONTCAR (file or folder), an ASE database (.db)."
)
BatchAtoms = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Atoms per forward pass (default 4,096): batches packed to this much work, a larger crystal alone, so "
        "memory stays bounded whatever the cell sizes; raise it on a GPU.",
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(min=1, help="Structures per forward pass instead (count batches, as before --batch-atoms)."),
]


def batching(batch_atoms: int | None, batch_size: int | None):
    """The forward batches asked for: --batch-size N (count), --batch-atoms N, or by default DEFAULT_BATCHING."""
    from mtc.data.packing import Batching
    from mtc.predict.predictor import DEFAULT_BATCHING

    if batch_atoms is not None and batch_size is not None:
        raise typer.BadParameter("give --batch-atoms or --batch-size, not both", param_hint="--batch-size")
    if batch_size is not None:
        return Batching(crystals=batch_size)
    return DEFAULT_BATCHING if batch_atoms is None else Batching(atoms=batch_atoms)


INTERVAL_HELP = (
    "Ensembles (mtc train --ensemble K): the central interval that <task>_lo and <task>_hi bound, e.g. 0.9 = 5-95 %."
)


def screen(
    db: Annotated[
        Path,
        typer.Argument(help=DB_HELP),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (predictions/, rejected/, selected.parquet).")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "models:/mtc@champion",
    where: Annotated[
        str | None,
        typer.Option(
            help='Filter on predictions, e.g. "band_gap > 1.0 and formation_energy_per_atom < -0.5"; an ensemble\'s '
            'bounds too: "band_gap_lo > 1.0".'
        ),
    ] = None,
    sort: Annotated[
        str | None, typer.Option(help="Rank the selection by this column (e.g. formation_energy_per_atom_hi).")
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    top: Annotated[int | None, typer.Option(min=1, help="Keep the first K rows of the selection.")] = None,
    batch_atoms: BatchAtoms = None,
    batch_size: BatchSize = None,
    workers: Annotated[int | None, typer.Option(min=1, help=WORKERS_HELP)] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address.")] = None,
    interval: Annotated[float, typer.Option(help=INTERVAL_HELP)] = 0.9,
    engine: Annotated[EngineKind, typer.Option(help=engine_help("screen"))] = EngineKind.auto,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.float32,
) -> None:
    """Score a structure database with a registered model through Ray Data (a small one: in this process).

    Every input id ends up exactly once: in OUT/predictions (one column per task) or in OUT/rejected
    (with the reason). A screen that was interrupted continues where it stopped when run again.
    An ensemble adds <task>_std, <task>_lo and <task>_hi per regression task.

    Example: mtc screen db.parquet -o screened --where "band_gap > 1" --sort formation_energy_per_atom --top 20
    """
    from mtc import tracking
    from mtc.screen.score import screen as run_screen

    forward = batching(batch_atoms, batch_size)  # a usage error before Ray starts
    with user_errors():
        tracking.configure()
        with progress("screen") as update:
            summary = run_screen(
                db,
                model,
                out,
                batching=forward,
                workers=workers,
                where=where,
                sort=sort,
                desc=desc,
                top=top,
                on_progress=update,
                interval=interval,
                engine=engine_of(engine, address, {"DB": db, "--out": out}, precision),
                precision=precision.value,
            )
        console.print(
            f"model {summary.model}: {summary.n_input:,} structures, {summary.n_scored:,} scored, "
            f"{summary.n_rejected:,} rejected "
            + (
                f"({', '.join(f'{k} {v}' for k, v in summary.rejected_by_reason.items())})"
                if summary.n_rejected
                else ""
            )
            + f"; {summary.throughput:,.0f} structures/s"
        )
        if summary.n_resumed_units:
            console.print(f"resumed: {summary.n_resumed_units} finished part(s) of an earlier run were kept")
        if summary.selected is not None:
            print_predictions(summary.selected.slice(0, 25), f"selected: {summary.selected.num_rows:,} rows")
        console.print(
            f"output: {summary.out}/predictions (Parquet dataset), rejected/, "
            + ("selected.parquet" if summary.selected is not None else "")
        )


def predict(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Structure files: every frame of extended XYZ (.xyz, .extxyz), POSCAR/CONTCAR (or a folder of them) "
            "and ASE databases (.db); CIF or any other file pymatgen reads."
        ),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "models:/mtc@champion",
    out: Annotated[Path | None, typer.Option(help="Also write the table (.csv or .parquet).")] = None,
    interval: Annotated[float, typer.Option(help=INTERVAL_HELP)] = 0.9,
    batch_atoms: BatchAtoms = None,
    batch_size: BatchSize = None,
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.float32,
) -> None:
    """Predict every task for a few structure files and print a table.

    An ensemble prints value ± calibrated std; --out also holds <task>_lo and <task>_hi.

    Examples: mtc predict NaCl.cif GaAs_POSCAR --model models:/mtc@champion; mtc predict relax.extxyz candidates.db
    """
    import pyarrow as pa

    from mtc import tracking
    from mtc.predict.inputs import read_structure_files
    from mtc.registry.models import load_predictor

    forward = batching(batch_atoms, batch_size)
    with user_errors():
        tracking.configure()
        if precision is Precision.bfloat16:
            warn_emulated_bfloat16("leave out --precision bfloat16")
        predictor = load_predictor(model, precision=precision.value).with_interval(interval)
        records, unreadable = read_structure_files(files)
        predictions, rejected = predictor.predict_records(records, forward)
        rejected = pa.concat_tables([rejected, unreadable]) if unreadable.num_rows else rejected
        print_predictions(with_spread(predictions), model, {t.name: t.unit for t in predictor.tasks})
        for row in rejected.to_pylist():
            console.print(f"[red]{row['id']}[/]: {row['reason']}: {row['detail']}")
        if out is not None:
            write_table(predictions, out)
            console.print(f"wrote {out}")


def write_table(table, path: Path) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".csv":
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
