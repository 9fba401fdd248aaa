"""Models as shareable folders: export a registered model with its card, pull a shipped one into the registry.

A model folder holds the bundle (``model.pt`` read with ``weights_only=True`` + ``model.json``), ``card.json``
(where the model came from and how good it is: data, split, test metrics per task, config, licence) and
``MODEL_CARD.md`` (the same card for people). mtc ships such folders under ``mtc/pretrained/<name>/``;
``pull`` registers one into the user's MLflow registry, so ``models:/<name>@champion`` works with no training.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mtc import __version__
from mtc.errors import MtcError
from mtc.model.bundle import META, WEIGHTS, ModelBundle

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained"
CARD, CARD_MD = "card.json", "MODEL_CARD.md"
EXPERIMENT = "pretrained"
WEIGHTS_TAG = "mtc.weights_sha256"


class PretrainedError(MtcError):
    """A model folder or shipped model name that cannot be used."""


def shipped() -> list[dict[str, Any]]:
    """The cards of the models shipped with mtc, by name."""
    return [json.loads(p.read_text()) for p in sorted(SHIPPED.glob(f"*/{CARD}"))]


def model_folder(source: str | Path) -> Path:
    """The folder of a shipped model name (``mp36k-mt3``) or of a path holding an exported model."""
    path = Path(source).expanduser()
    folder = path if path.is_dir() else SHIPPED / str(source)
    missing = [f for f in (WEIGHTS, META, CARD) if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        names = ", ".join(c["name"] for c in shipped()) or "none"
        what = f"{path} lacks {', '.join(missing)}" if path.is_dir() else f"no model folder or shipped model {source!r}"
        raise PretrainedError(f"{what}; shipped models: {names} (`mtc models shipped`)")
    return folder


def weights_digest(folder: Path) -> str:
    """sha256 of the weights file: the identity of a pulled model (pulling twice registers it once)."""
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()


def export(model_uri: str, out: Path, name: str, description: str = "", data_note: str = "") -> Path:
    """Write a logged model's bundle, ``card.json`` and ``MODEL_CARD.md`` into ``out``.

    The card is read from the model's training run: test and validation metrics, split sizes, the resolved
    config, the dataset manifest (input, hash, featurizer parameters) and the training wall time.
    """
    import mlflow

    from mtc.registry.models import load_bundle, resolve_uri

    concrete = resolve_uri(model_uri)
    bundle = load_bundle(concrete)
    run_id = _run_of(concrete)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())
            manifest = json.loads(Path(client.download_artifacts(run_id, "dataset/manifest.json", tmp)).read_text())
    except mlflow.exceptions.MlflowException:
        raise PretrainedError(
            f"{model_uri}: its run {run_id} holds no config.yaml and dataset manifest, so there is no card to write; "
            "export a model trained with `mtc train` (a pulled model is already a folder: share that folder)"
        ) from None
    params = run.data.params
    card = {
        "name": name,
        "description": description,
        "mtc_version": __version__,
        "tasks": [{"name": t["name"], "unit": t.get("unit", "")} for t in bundle.model_config["tasks"]],
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(("test/", "val/"))},
        "best_epoch": int(run.data.metrics.get("best_epoch", 0)),
        "split": {s: int(params[f"n_{s}"]) for s in ("train", "val", "test") if f"n_{s}" in params},
        "n_parameters": int(params["n_parameters"]) if "n_parameters" in params else None,
        "data": {
            "note": data_note,
            "inputs_hash": manifest.get("inputs_hash"),
            "n_crystals": manifest.get("n_written"),
        },
        "graph_params": bundle.graph_params,
        "config": config,
        "training": {"source": concrete, "run_id": run_id, "minutes": _minutes(run)},
    }
    out = Path(out)
    bundle.save(out)
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    (out / CARD_MD).write_text(render_card(card))
    return out


def pull(source: str | Path, name: str | None = None, alias: str = "champion") -> dict[str, Any]:
    """Register the model folder ``source`` (a shipped name or a path) as ``name`` and point ``alias`` at it.

    The card's metrics become the metrics of an MLflow run in experiment ``pretrained``, so ``mtc models show``
    and the UI show them. Pulling the same weights again reuses the version it registered.

    Returns:
        ``{"name", "version", "alias", "model_uri", "new"}``.
    """
    import mlflow

    from mtc import tracking
    from mtc.registry.models import promote, publish

    folder = model_folder(source)
    card = json.loads((folder / CARD).read_text())
    name = name or card["name"]
    digest = weights_digest(folder)
    client = mlflow.MlflowClient()
    version = _version_with_weights(client, name, digest)
    new = version is None
    if new:
        bundle = ModelBundle.load(folder)
        run = client.create_run(
            tracking.experiment_id(EXPERIMENT), run_name=card["name"], tags={"mtc.pretrained": card["name"]}
        )
        run_id = run.info.run_id
        client.log_batch(run_id, metrics=_metrics(card["metrics"]))
        for file in (CARD, CARD_MD):
            client.log_artifact(run_id, str(folder / file))
        version = publish(run_id, bundle, name)["version"]
        client.set_model_version_tag(name, version, WEIGHTS_TAG, digest)
        client.set_model_version_tag(name, version, "mtc.pretrained", card["name"])
        client.set_terminated(run_id)
    promote(name, version, alias)
    return {"name": name, "version": version, "alias": alias, "model_uri": f"models:/{name}@{alias}", "new": new}


def render_card(card: dict[str, Any]) -> str:
    """``card.json`` as Markdown: what the model predicts, from what data, how well, and under which terms."""
    units = {t["name"]: t["unit"] for t in card["tasks"]}
    lines = [f"# {card['name']}", "", card.get("description") or "", ""]
    lines += ["| task | unit | test MAE | test R² | val MAE |", "|---|---|---|---|---|"]
    metric = card["metrics"].get
    for task, unit in units.items():
        cells = [metric(f"test/{task}/mae"), metric(f"test/{task}/r2"), metric(f"val/{task}/mae")]
        lines.append(f"| {task} | {unit} | " + " | ".join("-" if c is None else f"{c:.4g}" for c in cells) + " |")
    split = card.get("split", {})
    training = card.get("training", {})
    lines += [
        "",
        f"- Split (crystals): {', '.join(f'{k} {v:,}' for k, v in split.items())}; "
        f"best epoch {card.get('best_epoch')}; {card.get('n_parameters') or 0:,} parameters; "
        f"trained in {training.get('minutes', '?')} min with mtc {card.get('mtc_version')}.",
        f"- Graphs: {', '.join(f'{k} {v}' for k, v in card.get('graph_params', {}).items())}.",
        f"- Data: {card['data'].get('note') or '-'} ({card['data'].get('n_crystals') or 0:,} crystals featurized, "
        f"inputs hash {card['data'].get('inputs_hash')}).",
        f"- Source: {training.get('source')} (run {training.get('run_id')}).",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(card.get("config", {}), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _run_of(model_uri: str) -> str:
    from mtc.registry.models import ModelNotFound, get_version

    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    if model_uri.startswith("models:/"):
        name, _, version = model_uri.removeprefix("models:/").partition("/")
        return get_version(name, version).run_id
    raise ModelNotFound(f"{model_uri}: export takes models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN/mtc_model")


def _minutes(run) -> float | None:
    end, start = run.info.end_time, run.info.start_time
    return round((end - start) / 60000, 1) if end and start else None


def _metrics(values: dict[str, float]):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None]


def _version_with_weights(client, name: str, digest: str) -> str | None:
    import mlflow

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    return next((str(v.version) for v in versions if (v.tags or {}).get(WEIGHTS_TAG) == digest), None)
