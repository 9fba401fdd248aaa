"""``mtc train``: Ray Train DDP on graph shards, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtc_cli.common import console, user_errors, warn_emulated_bfloat16
from mtc_cli.tables import print_calibration, print_metrics

DEFAULT_CONFIG = Path("configs/mt3.yaml")


def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Graph shards written by `mtc featurize`.")],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="YAML run config (tasks, model, optim, split...).")
    ] = DEFAULT_CONFIG,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set optim.lr=0.001 --set epochs=50 (repeatable)."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(min=0, help="DDP workers on NCCL, one GPU each. Fails fast if the cluster lacks them.")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="CPU workers (gloo) when there is no GPU.")] = None,
    train_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Subsample the training split only (data-efficiency runs).")
    ] = None,
    budget_minutes: Annotated[
        float | None,
        typer.Option(
            help="Train the epochs that fit this many minutes (start-up, final test and logging included), at most "
            "the config's epochs; the cosine schedule spans them. Set epochs high to fill the budget.",
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from this model's trunk (models:/NAME@ALIAS, models:/NAME/VERSION, "
            "runs:/RUN/mtc_model or a folder with model.pt + model.json). Tasks it has keep their heads, new tasks "
            "get new ones; see the config's finetune: section (freeze, trunk_lr).",
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue the interrupted run RUN_ID from its last checkpoint, with its own config."),
    ] = None,
    register: Annotated[
        str, typer.Option(help="Register the trained model as a new version of this name ('' to skip).")
    ] = "mtc",
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address; default: an embedded local Ray.")
    ] = None,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train K members (seeds seed..seed+K-1) as one model with calibrated intervals: one parent "
            "MLflow run, a child run per member, one registered version.",
        ),
    ] = 1,
    bootstrap: Annotated[
        bool, typer.Option("--bootstrap", help="With --ensemble: each member trains on a bootstrap resample.")
    ] = False,
) -> None:
    """Train a multitask CGCNN with Ray Train and log the run to MLflow.

    The run logs the resolved config, per-epoch metrics per task, test metrics, parity plots,
    learning curves, the dataset manifest and the model. Open them with `mtc ui`.

    Example: mtc train --data demo-out/shards --config configs/mt3.yaml --set epochs=5 --workers 2

    With --ensemble 5 the model predicts each task's mean with a calibrated std and interval (mtc screen,
    mtc predict); the run also logs coverage, miscalibration area and calibration plots per task.

    Fine-tune: mtc train --data shards/elastic --config configs/elastic.yaml --init models:/mp36k-mt3@champion

    In a fixed time: mtc train --data shards/mp36k --budget-minutes 44 --set epochs=1000
    """
    with user_errors():
        run_training(
            data,
            config,
            set_ or [],
            gpus,
            workers,
            train_fraction,
            resume,
            register or None,
            address,
            ensemble,
            bootstrap,
            init,
            budget_minutes,
        )


def run_training(
    data,
    config_path,
    overrides,
    gpus=None,
    workers=None,
    train_fraction=None,
    resume=None,
    register="mtc",
    address=None,
    ensemble=1,
    bootstrap=False,
    init=None,
    budget_minutes=None,
):
    """Resolve the config, train (from the model ``init`` when given), log the model (registered under ``register``
    unless None), print the test table.

    ``ensemble`` > 1 trains that many members as one model (``mtc.train.ensemble``).

    Returns:
        (the TrainResult, ``{"model_uri", "name", "version"}`` of the logged model).
    """
    from mtc import tracking
    from mtc.cluster import connect
    from mtc.config import TrainConfig, load_config
    from mtc.errors import MtcError
    from mtc.preflight import check_training_paths
    from mtc.registry.models import load_source, publish
    from mtc.train.finetune import ParentModel, align_to_parent
    from mtc.train.trainer import config_of_run
    from mtc.train.trainer import train as run_train
    from mtc_cli.epochs import epoch_progress

    if ensemble > 1 and resume:
        raise MtcError("--resume continues one run: resume the interrupted member's run without --ensemble")
    if bootstrap and ensemble < 2:
        raise MtcError("--bootstrap resamples the training split per ensemble member: add --ensemble K (K >= 2)")
    overrides = list(overrides)
    if gpus is not None:
        overrides.append(f"scaling.gpus={gpus}")
    if workers is not None:
        overrides.append(f"scaling.workers={workers}")
    if train_fraction is not None:
        overrides.append(f"split.train_fraction={train_fraction}")
    if budget_minutes is not None:
        overrides.append(f"budget_minutes={budget_minutes}")
    if resume and init:
        raise MtcError("--resume continues a run from its own parent model; leave out --init")
    config = config_of_run(resume, overrides) if resume else load_config(TrainConfig, config_path, overrides)
    console.print(connect(address))
    check_training_paths(data)
    if config.precision == "bfloat16" and not config.scaling.gpus:
        warn_emulated_bfloat16("train with --set precision=float32")
    parent = None
    if init:
        tracking.configure()
        uri, bundle = load_source(init)
        parent = ParentModel(bundle, uri)
        config, notes = align_to_parent(config, parent.bundle)
        console.print(f"starting from [bold]{parent.uri}[/] (tasks {', '.join(parent.bundle.task_names)})")
        for note in notes:
            console.print(f"  {note}")
    tasks = ", ".join(t.name for t in config.tasks)
    epochs = f"{config.epochs} epochs"
    if config.budget_minutes:
        epochs = f"the epochs that fit {config.budget_minutes:g} minutes (at most {config.epochs})"
    console.print(f"training [bold]{tasks}[/] for {epochs} on {data}")
    if ensemble > 1:
        from mtc.train.ensemble import train_ensemble

        def member_progress(k, member):
            console.print(f"member {k + 1}/{ensemble} (seed {member.seed}{', bootstrap' if bootstrap else ''})")
            return epoch_progress(member)

        result = train_ensemble(data, config, ensemble, bootstrap, member_progress, parent)
    else:
        with epoch_progress(config) as callbacks:
            result = run_train(data, config, resume_run_id=resume, ray_callbacks=callbacks, parent=parent)
    for task, n in result.invalid_labels.items():
        if n:
            console.print(
                f"{task}: {n} label(s) outside the transform's domain (log10 of a value <= 0) trained as missing"
            )
    published = publish(result.run_id, result.bundle, register)
    print_result(result, config, published)
    return result, published


def print_result(result, config, published: dict) -> None:
    from mtc.tracking import tracking_uri
    from mtc.train.trainer import describe_metrics

    units = {t.name: t.unit for t in config.tasks}
    if result.bundle.n_members > 1:
        print_metrics(
            f"test metrics (ensemble of {result.bundle.n_members})", describe_metrics(result.metrics, config), units
        )
        print_calibration(describe_metrics(result.metrics, config), units)
    else:
        best = int(result.metrics.get("best_epoch", 0))
        print_metrics(f"test metrics (best epoch {best})", describe_metrics(result.metrics, config), units)
    console.print(f"MLflow run [bold]{result.run_id}[/] in {tracking_uri()}")
    reg = published
    if reg.get("version"):
        console.print(
            f"registered [bold]{reg['name']}[/] version {reg['version']}; make it the champion with "
            f"[bold]mtc models promote {reg['name']} {reg['version']} --alias champion[/]"
        )
    console.print("look at it: [bold]mtc ui[/]  (parity plots and learning curves under the run's artifacts)")
