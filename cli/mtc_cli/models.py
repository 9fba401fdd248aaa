"""``mtc models``: registered model versions and their aliases."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtc_cli.common import console, user_errors
from mtc_cli.tables import print_metrics

app = typer.Typer(no_args_is_help=True, help="Registered models: list versions, show one, move aliases.")


@app.command("list")
def list_models(name: Annotated[str | None, typer.Argument(help="Only this registered model.")] = None) -> None:
    """Every version of the registered models, newest first, with aliases and source runs."""
    from mtc import tracking
    from mtc.registry.models import list_versions

    with user_errors():
        tracking.configure()
        rows = list_versions(name)
        table = Table(title=f"registered models in {tracking.tracking_uri()}")
        for column in ("name", "version", "aliases", "run", "created"):
            table.add_column(column)
        for r in rows:
            created = datetime.datetime.fromtimestamp(r["created"] / 1000).strftime("%Y-%m-%d %H:%M")
            table.add_row(r["name"], str(r["version"]), ", ".join(r["aliases"]), r["run_id"], created)
        console.print(table if rows else "no registered models yet: `mtc train` registers one")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias (e.g. champion).")],
) -> None:
    """A version's tasks, source run and test metrics."""
    from mtc import tracking
    from mtc.registry.models import describe_version

    with user_errors():
        tracking.configure()
        info = describe_version(name, version)
        console.print(f"[bold]{name}[/] version {info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
        console.print(f"run {info['run_id']}  tasks: {', '.join(info['tasks'])}")
        rows = [
            (task, {k.rsplit("/", 1)[1]: v for k, v in info["metrics"].items() if k.startswith(f"test/{task}/")})
            for task in info["tasks"]
        ]
        print_metrics("test metrics", rows, {})


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to point at the version.")] = "champion",
) -> None:
    """Point an alias (default: champion) at a version: `mtc screen` uses models:/NAME@champion."""
    from mtc import tracking
    from mtc.registry.models import promote as run_promote

    with user_errors():
        tracking.configure()
        run_promote(name, version, alias)
        console.print(f"models:/{name}@{alias} -> version {version}")


@app.command("shipped")
def shipped() -> None:
    """The pretrained models that come with mtc, with their test metrics: `mtc models pull NAME` registers one."""
    from mtc.registry.pretrained import shipped as shipped_cards

    cards = shipped_cards()
    table = Table(title="pretrained models shipped with mtc")
    for column in ("name", "tasks (test MAE)", "trained on"):
        table.add_column(column)
    for card in cards:
        test_mae = {t["name"]: card["metrics"].get(f"test/{t['name']}/mae", float("nan")) for t in card["tasks"]}
        maes = [f"{t['name']} {test_mae[t['name']]:.3g} {t['unit']}" for t in card["tasks"]]
        table.add_row(card["name"], "\n".join(maes), f"{card['split'].get('train', 0):,} crystals")
    console.print(table if cards else "no pretrained models ship with this mtc")


@app.command("pull")
def pull(
    source: Annotated[str, typer.Argument(help="A shipped model (see `mtc models shipped`) or an exported folder.")],
    name: Annotated[str | None, typer.Option(help="Register under this name (default: the model's own).")] = None,
    alias: Annotated[str, typer.Option(help="Alias to point at the registered version.")] = "champion",
) -> None:
    """Register a pretrained model so that `mtc screen --model models:/NAME@champion` works with no training.

    Example: mtc models pull mp36k-mt3 && mtc screen data/demo/candidates.parquet --model models:/mp36k-mt3@champion
    """
    from mtc import tracking
    from mtc.registry.pretrained import pull as run_pull

    with user_errors():
        tracking.configure()
        info = run_pull(source, name, alias)
        verb = "registered" if info["new"] else "already registered:"
        console.print(f"{verb} [bold]{info['name']}[/] version {info['version']}; {info['model_uri']} points at it")


@app.command("export")
def export(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN/mtc_model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (weights, model.json, card).")],
    name: Annotated[str, typer.Option(help="The model's name on its card and when pulled.")],
    description: Annotated[str, typer.Option(help="One paragraph for the card.")] = "",
    data_note: Annotated[str, typer.Option(help="Where the training data came from, its licence and citation.")] = "",
) -> None:
    """Write a registered model as a folder to share: weights, model.json, card.json and MODEL_CARD.md.

    Anyone can register the folder with `mtc models pull FOLDER`; the card comes from the model's training run.
    """
    from mtc import tracking
    from mtc.registry.pretrained import export as run_export

    with user_errors():
        tracking.configure()
        folder = run_export(model, out, name, description, data_note)
        console.print(f"wrote {folder} (model.pt, model.json, card.json, MODEL_CARD.md)")
