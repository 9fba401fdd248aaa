"""``mtc demo``: the main job end to end on the bundled slice of real Materials Project crystals."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from mtc_cli.common import console, progress, user_errors
from mtc_cli.featurize import print_summary
from mtc_cli.tables import print_predictions
from mtc_cli.train import run_training

DEMO = Path("data/demo")
DEMO_LABELS = ["formation_energy_per_atom", "band_gap", "efermi"]


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes shards and screening results.")] = Path("demo-out"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (a few minutes on 2 cores).")] = 10,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers.")] = 1,
) -> None:
    """Featurize 4,000 real MP crystals, train the three-task MT-CGCNN, register it, screen 1,000 candidates.

    Everything runs on the embedded defaults: a local Ray, and the MLflow store in $MTC_HOME (~/.mtc).
    """
    from mtc.cluster import connect
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize
    from mtc.registry.models import promote
    from mtc.screen.score import screen

    with user_errors():
        console.rule("[bold]mtc demo")
        console.print(connect())
        console.print(f"\n[bold]1. featurize[/] {DEMO / 'mp_demo.jsonl.gz'} -> {out / 'shards'}")
        with progress("featurize") as update:
            summary = featurize(
                DEMO / "mp_demo.jsonl.gz", out / "shards", FeaturizeConfig(), labels=DEMO_LABELS, on_progress=update
            )
        print_summary(summary)

        console.print(f"\n[bold]2. train[/] configs/mt3.yaml for {epochs} epochs (Ray Train, {workers} worker(s))")
        _, published = run_training(
            out / "shards",
            Path("configs/mt3.yaml"),
            [f"epochs={epochs}", "patience=0", "experiment=mtc-demo"],
            workers=workers,
        )

        name, version = published["name"], published["version"]
        promote(name, version, "champion")
        console.print(f"\n[bold]3. register[/] models:/{name}@champion -> version {version}")

        target = out / "screen"
        shutil.rmtree(target, ignore_errors=True)
        console.print(f"\n[bold]4. screen[/] {DEMO / 'candidates.parquet'} with models:/{name}@champion -> {target}")
        screened = screen(
            DEMO / "candidates.parquet",
            f"models:/{name}@champion",
            target,
            where="band_gap > 1.0",
            sort="formation_energy_per_atom",
            top=10,
        )
        console.print(
            f"{screened.n_scored:,} candidates scored, {screened.n_rejected} rejected "
            f"({screened.throughput:,.0f} structures/s)"
        )
        print_predictions(screened.selected, "most stable predicted insulators (band gap > 1 eV)")
        console.rule()
        console.print(f"predictions: {target}/predictions   runs and models: [bold]mtc ui[/]")
