"""The ``mtc`` application: one typer command per pipeline step."""

from __future__ import annotations

import gc

import typer

from mtc_cli import models
from mtc_cli.demo import demo
from mtc_cli.embed import embed, similar
from mtc_cli.experiment import experiment
from mtc_cli.featurize import featurize
from mtc_cli.screen import predict, screen
from mtc_cli.train import train
from mtc_cli.tune import tune
from mtc_cli.ui import ui

app = typer.Typer(
    name="mtc",
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Multitask crystal graph networks: featurize structures, train, tune, register and screen.",
)


@app.callback()
def _root() -> None:
    """Multitask crystal graph networks: featurize structures, train, tune, register and screen."""


app.command("featurize")(featurize)
app.command("train")(train)
app.command("tune")(tune)
app.command("experiment")(experiment)
app.command("screen")(screen)
app.command("predict")(predict)
app.command("embed")(embed)
app.command("similar")(similar)
app.add_typer(models.app, name="models")
app.command("ui")(ui)
app.command("demo")(demo)


def main() -> None:
    try:
        app()
    finally:
        # Objects alive at exit are frozen, so the interpreter's last collections skip torch's, MLflow's and Ray's
        # modules: exit took 0.75 s of a small screen's 4.6, 0.1 s frozen. atexit handlers (Ray's shutdown, logging's
        # flush) still run; every file mtc writes is closed before its command returns.
        gc.freeze()
