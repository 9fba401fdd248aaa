"""``mtc experiment``: a grid of trainings (task settings x fractions x compute bases x axes x seeds) as Tune trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtc_cli.common import BUDGET_HELP, console, echo, quiet_budget_errors, user_errors, warn_emulated_bfloat16


def experiment(
    spec: Annotated[
        Path | None, typer.Argument(help="Experiment spec YAML, e.g. configs/experiments/mt3.yaml.", show_default=False)
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Graph shards written by `mtc featurize` (--resume: recorded).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the experiment (default: experiment-DATE-TIME).")] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue the experiment NAME; finished trials are not rerun.")
    ] = None,
    budget_minutes: Annotated[
        float | None,
        typer.Option(min=0, help=BUDGET_HELP),
    ] = None,
    max_concurrent: Annotated[
        int, typer.Option(min=1, help="Trials at once; never more than the Ray cluster holds.")
    ] = 1,
    workers_per_trial: Annotated[int | None, typer.Option(min=1, help="CPU workers per trial (gloo).")] = None,
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address; default: an embedded local Ray.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a spec key, e.g. --set 'seeds=[1, 2]' --set train.epochs=5 (repeatable). With --resume it "
            "may only add trials: --set 'seeds=[0, 1, 2, 3, 4, 5]', --set settings.all=true.",
        ),
    ] = None,
) -> None:
    """Does sharing pay? Train each task alone and together, over training fractions and seeds, and report.

    The spec lists the tasks and the settings to train (each task alone, each pair, all together, named
    variants), training fractions, compute bases (equal_steps: every model trains `epochs`; equal_compute: a
    model of k tasks trains k x `epochs`), seeds, and any config key as an axis. Every trial is a Ray Train run
    (an MLflow child run under one parent run); all use the same split. The parent run's report/ holds
    cells.csv (mean ± std over seeds per cell), trials.csv, summary.md (change vs the task alone, significant
    only beyond the seeds' spread; which setting to serve each task from) and plots. --budget-minutes stops
    launching trials; --resume NAME continues, and --resume NAME --set ... widens a finished or unfinished
    experiment (more seeds, another setting) without rerunning what it has: a --set that would drop a trial or
    change how one trains is refused before work.

    Example: mtc experiment configs/experiments/tiny.yaml --data demo-out/shards --budget-minutes 30
             mtc experiment configs/experiments/mt3.yaml --data shards/mp36k --set 'seeds=[1, 2]'
             mtc experiment --resume NAME --set 'seeds=[1, 2, 3, 4]'
    """
    with user_errors():
        run_experiment(spec, data, name, resume, budget_minutes, max_concurrent, workers_per_trial, address, set_ or ())


def run_experiment(
    spec_path,
    data,
    name=None,
    resume=None,
    budget_minutes=None,
    max_concurrent=1,
    workers_per_trial=None,
    address=None,
    overrides=(),
):
    """Start or resume the experiment, print the summary and where the report is; returns the outcome."""
    from mtc.cluster import connect
    from mtc.errors import MtcError
    from mtc.experiment.runner import resume_experiment, start_experiment
    from mtc.experiment.spec import load_spec
    from mtc.preflight import check_training_paths

    quiet_budget_errors(budget_minutes)
    if resume:
        if spec_path or name or workers_per_trial is not None:
            raise MtcError(
                "--resume continues an experiment with the spec and name it started with (--set may add trials); "
                "drop SPEC, --name and --workers-per-trial"
            )
        console.print(connect(address))
        outcome = resume_experiment(resume, shards=data, budget_minutes=budget_minutes, overrides=overrides, echo=echo)
    else:
        if data is None or spec_path is None:
            raise MtcError("give SPEC.yaml and --data SHARDS (or --resume NAME)")
        spec = load_spec(spec_path, overrides)
        console.print(connect(address))
        check_training_paths(data)
        if any(c.precision == "bfloat16" and not c.scaling.gpus for c in map(spec.trial_config, spec.points())):
            warn_emulated_bfloat16("leave precision bfloat16 out of the spec")
        outcome = start_experiment(
            data,
            spec,
            name=name,
            max_concurrent=max_concurrent,
            workers_per_trial=workers_per_trial,
            budget_minutes=budget_minutes,
            echo=echo,
        )
    print_outcome(outcome)
    return outcome


def print_outcome(outcome) -> None:
    """The summary tables, what did not finish, and where the report is."""
    from mtc.tracking import tracking_uri

    console.print(outcome.report.summary, markup=False, soft_wrap=True)
    failed = sum(r.status == "error" for r in outcome.records)
    if failed:
        console.print(f"{failed} trial(s) failed (trials.csv says which); --resume {outcome.name} runs them again")
    if outcome.not_started:
        console.print(
            f"the time budget ran out: {outcome.not_started} trial(s) not started; the report covers what finished; "
            f"continue with mtc experiment --resume {outcome.name}",
            soft_wrap=True,
        )
    console.print(
        f"MLflow parent run [bold]{outcome.parent_run_id}[/] in {tracking_uri()}: report/cells.csv, report/trials.csv, "
        "report/summary.md, report/error_vs_fraction_<basis>.png, report/change_vs_alone_<basis>.png",
        soft_wrap=True,
    )
