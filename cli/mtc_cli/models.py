"""``mtc models``: registered model versions and their aliases."""

from __future__ import annotations

import datetime
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
