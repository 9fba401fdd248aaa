"""``mtc tune``: Ray Tune over loss weights and task groupings, every trial a Ray Train run in MLflow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mtc_cli.common import BUDGET_HELP, abbreviations, console, echo, legend, quiet_budget_errors, user_errors


def tune(
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Graph shards written by `mtc featurize` (--resume: recorded).")
    ] = None,
    space: Annotated[
        Path | None, typer.Option("--space", "-s", help="Search space YAML, e.g. configs/tune/mt3.yaml.")
    ] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Number of trials (default: the space's).")] = None,
    max_concurrent: Annotated[
        int, typer.Option(min=1, help="Trials at once; never more than the Ray cluster holds.")
    ] = 1,
    gpus_per_trial: Annotated[
        int | None, typer.Option(min=0, help="GPU workers per trial (DDP on NCCL, one GPU each).")
    ] = None,
    workers_per_trial: Annotated[int | None, typer.Option(min=1, help="CPU workers per trial (gloo).")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the tune (default: tune-DATE-TIME).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the tune NAME; finished trials are not rerun.")] = None,
    budget_minutes: Annotated[float | None, typer.Option(min=0, help=BUDGET_HELP)] = None,
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address; default: an embedded local Ray.")
    ] = None,
) -> None:
    """Tune loss weights, task groupings and learning rate with Ray Tune; every trial is an MLflow child run.

    The space may also vary the sharing method, shared depth, width and auxiliary tasks (configs/tune/methods.yaml).
    The objective is the mean over tasks of validation MAE divided by that task's single-task MAE
    (< 1: better than alone). The parent run holds the ranked trials, the best config as YAML for
    `mtc train --config`, and a task-affinity table and heatmap. --budget-minutes stops launching trials (the
    single-task references always run); --resume NAME runs the rest.

    Example: mtc tune --data demo-out/shards --space configs/tune/tiny.yaml --max-concurrent 2
             mtc tune --data shards/mp36k --space configs/tune/methods.yaml --budget-minutes 480
    """
    with user_errors():
        run_tune(
            data,
            space,
            trials,
            max_concurrent,
            gpus_per_trial,
            workers_per_trial,
            name,
            resume,
            budget_minutes,
            address,
        )


def run_tune(
    data,
    space_path,
    trials=None,
    max_concurrent=1,
    gpus_per_trial=None,
    workers_per_trial=None,
    name=None,
    resume=None,
    budget_minutes=None,
    address=None,
):
    """Start or resume the tune, print the ranked table; returns the TuneOutcome."""
    from mtc.cluster import connect
    from mtc.errors import MtcError
    from mtc.preflight import check_training_paths
    from mtc.tune.driver import resume_tune, start_tune
    from mtc.tune.search import load_space

    quiet_budget_errors(budget_minutes)
    if resume:
        if space_path or trials or gpus_per_trial is not None or workers_per_trial is not None or name:
            raise MtcError(
                "--resume continues a tune with the space, trials and name it started with; "
                "drop --space, --trials, --gpus-per-trial, --workers-per-trial and --name"
            )
        console.print(connect(address))
        outcome = resume_tune(resume, shards=data, budget_minutes=budget_minutes, echo=echo)
    else:
        if data is None or space_path is None:
            raise MtcError("give --data SHARDS and --space SPACE.yaml (or --resume NAME)")
        space = load_space(space_path)
        console.print(connect(address))
        check_training_paths(data)
        outcome = start_tune(
            data,
            space,
            name=name,
            trials=trials,
            max_concurrent=max_concurrent,
            workers_per_trial=workers_per_trial,
            gpus_per_trial=gpus_per_trial,
            budget_minutes=budget_minutes,
            echo=echo,
        )
    print_outcome(outcome)
    return outcome


def print_outcome(outcome) -> None:
    """The ranked table (task names abbreviated, with a legend), the references and where the report is."""
    from mtc.tracking import tracking_uri
    from mtc.tune.search import GROUP_SEP, TASK_SEP

    ranked = outcome.report.ranked
    tasks = [c.removesuffix(" rel") for c in ranked.columns if c.endswith(" rel")]
    auxiliary = "auxiliary" in ranked  # trials that chose auxiliary tasks (trained, not scored)
    grouped = [t for label in ranked["grouping"] for group in label.split(GROUP_SEP) for t in group.split(TASK_SEP)]
    short = abbreviations(list(dict.fromkeys([*tasks, *grouped])))

    def abbreviated(label: str) -> str:
        """``a+b | c`` with each task abbreviated; ``none`` stays."""
        return GROUP_SEP.join(TASK_SEP.join(short.get(t, t) for t in g.split(TASK_SEP)) for g in label.split(GROUP_SEP))

    table = Table(title=f"tune {outcome.name}: trials ranked by objective (mean val error / task alone)")
    choices = outcome.report.choices
    headers = (
        "rank",
        "trial",
        "objective",
        "status",
        "grouping",
        "loss",
        "lr",
        *(["auxiliary"] if auxiliary else []),
        *(c.rsplit(".", 1)[-1] for c in choices),
        *(short[t] for t in tasks),
    )
    for column in headers:
        left = column in ("trial", "status", "grouping", "loss", "auxiliary")
        table.add_column(column, justify="left" if left else "right", no_wrap=column != "grouping", min_width=4)
    for row in ranked.to_dict("records"):
        status = row["status"] if row["status"] != "stopped" else f"stopped @{row['epochs']}"
        table.add_row(
            str(row["rank"]),
            row["trial"],
            _num(row["objective"]),
            status,
            abbreviated(row["grouping"]),
            row["loss"],
            row["lr"],
            *([abbreviated(row["auxiliary"])] if auxiliary else []),
            *(str(row[c]) for c in choices),
            *(_num(row[f"{t} rel"]) for t in tasks),
        )
    (console if console.is_terminal else Console(width=160, highlight=False)).print(table)  # logs: no squeeze
    names = legend(short)
    console.print(f"per-task columns: val error / the task alone{'; ' + names if names else ''}", soft_wrap=True)
    refs = ", ".join(f"{t} {v:.4g}" for t, v in outcome.references.items())
    console.print(f"single-task references (val MAE; 1 - AUC for binary): {refs}", soft_wrap=True)
    console.print(
        f"MLflow parent run [bold]{outcome.parent_run_id}[/] in {tracking_uri()}: report/trials.csv, "
        "report/best_config.yaml, report/affinity.csv, report/affinity.png",
        soft_wrap=True,
    )
    if outcome.not_started:
        console.print(
            f"the time budget ran out: {outcome.not_started} trial(s) not started; the report covers what finished; "
            f"continue with mtc tune --resume {outcome.name}",
            soft_wrap=True,
        )
    if outcome.report.best is not None:
        console.print(
            f"train the best: [bold]mtc train --data SHARDS --config {_best_yaml(outcome.parent_run_id)}[/]",
            soft_wrap=True,
        )


def _best_yaml(run_id: str) -> str:
    """The best config's local path (embedded store), else the command that downloads it."""
    import mlflow

    uri = f"{mlflow.MlflowClient().get_run(run_id).info.artifact_uri}/report/best_config.yaml"
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return f"$(mlflow artifacts download -u {uri})"


def _num(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
