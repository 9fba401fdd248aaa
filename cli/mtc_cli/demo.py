"""``mtc demo``: the main job end to end on the bundled slice of real Materials Project crystals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtc_cli.common import console, progress_bar, user_errors
from mtc_cli.featurize import print_summary

DEMO_DATA = Path("data/demo/mp_demo.jsonl.gz")
DEMO_LABELS = ["formation_energy_per_atom", "band_gap", "efermi"]


def demo(
    data: Annotated[Path, typer.Option(help="Demo structures (JSONL, mp36k layout).")] = DEMO_DATA,
    out: Annotated[Path, typer.Option(help="Where the demo writes its outputs.")] = Path("demo-out"),
) -> None:
    """Run the main job on the demo data: featurize real MP crystals into graph shards.

    Training, registration and screening join this command as they land (see the README).
    """
    from mtc.cluster import connect
    from mtc.config import FeaturizeConfig
    from mtc.data.featurize import featurize as run_featurize

    with user_errors():
        console.rule("[bold]mtc demo")
        console.print(connect())
        console.print(f"[bold]1. featurize[/] {data} -> {out / 'shards'}")
        with progress_bar() as progress:
            task = progress.add_task("featurizing", total=None)
            summary = run_featurize(
                data, out / "shards", FeaturizeConfig(), labels=DEMO_LABELS,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        print_summary(summary)
        console.print("[yellow]not yet:[/] training, registration and screening land in later releases")
