"""Log, register, promote and load mtc models in MLflow (aliases, never stages).

A logged model is MLflow's pyfunc flavour (``pyfunc_entry.py`` + the mtc package as code, for
``mlflow models serve``) around one artifact, ``bundle/`` (``model.pt`` + ``model.json``). mtc itself never runs
the code stored with a model: ``load_bundle`` reads only the bundle's weights and JSON with the installed mtc.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle
from mtc.train.finetune import PARENT_TAG

DEFAULT_NAME = "mtc"
ARTIFACT_PATH = "mtc_model"
BUNDLE = "bundle"
PIP_REQUIREMENTS = ["torch", "pymatgen", "pyarrow", "numpy", "pandas", "pydantic", "pyyaml", "mlflow"]


class ModelNotFound(MtcError):
    """A model URI, name, version or alias that the registry does not hold."""


def example_input():
    """A one-row input (rock-salt NaCl as CIF text) for the signature and the input example."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return pd.DataFrame({"id": ["NaCl-example"], "cif": [nacl.to(fmt="cif")]})


def _signature(bundle: ModelBundle):
    """Inputs: id and a structure; outputs: the predictor's columns (``bundle_schema``) and ``error``; an ensemble
    also takes the parameter ``interval`` (the central interval of ``<task>_lo`` / ``<task>_hi``)."""
    import pyarrow as pa
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from mtc.predict.predictor import DEFAULT_INTERVAL, bundle_schema

    inputs = Schema([ColSpec("string", c, required=False) for c in ("id", "cif", "structure")])
    kinds = {pa.string(): "string", pa.int8(): "integer", pa.float32(): "float"}
    outputs = [ColSpec(kinds[f.type], f.name) for f in bundle_schema(bundle)]
    outputs.append(ColSpec("string", "error", required=False))
    params = ParamSchema([ParamSpec("interval", "double", DEFAULT_INTERVAL)]) if bundle.n_members > 1 else None
    return ModelSignature(inputs=inputs, outputs=Schema(outputs), params=params)


def log_model(run_id: str, bundle: ModelBundle) -> str:
    """Log ``bundle`` as the pyfunc model of ``run_id``; returns its URI (``models:/m-...``)."""
    import mlflow

    import mtc

    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
        bundle_dir = bundle.save(Path(folder) / BUNDLE)
        code = Path(folder) / "code" / "mtc"  # the package without the shipped pretrained weights
        shutil.copytree(Path(mtc.__file__).parent, code, ignore=shutil.ignore_patterns("pretrained", "__pycache__"))
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={BUNDLE: str(bundle_dir)},
            code_paths=[str(code)],
            signature=_signature(bundle),
            input_example=example_input(),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri


def register(model_uri: str, name: str = DEFAULT_NAME, tags: dict[str, str] | None = None) -> str:
    """Register a logged model as a new version of ``name`` (with version ``tags``); returns the version."""
    import mlflow

    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def publish(run_id: str, bundle: ModelBundle, name: str | None = DEFAULT_NAME) -> dict:
    """Log a trained run's model as a pyfunc and, given ``name``, register it.

    A run started from another model (tag ``mtc.parent_model``) gives its version the same tag: lineage from
    registry version to registry version.

    Returns:
        ``{"model_uri": ..., "name": ..., "version": ...}`` (name and version None when not registered).
    """
    import mlflow

    model_uri = log_model(run_id, bundle)
    parent = mlflow.MlflowClient().get_run(run_id).data.tags.get(PARENT_TAG)
    version = register(model_uri, name, {PARENT_TAG: parent} if parent else None) if name else None
    return {"model_uri": model_uri, "name": name, "version": version}


def promote(name: str, version: str, alias: str = "champion") -> None:
    """Point ``alias`` (e.g. champion) at ``version`` of registered model ``name``."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise ModelNotFound(f"registered model {name!r} has no version {version}: see `mtc models list`") from None
    client.set_registered_model_alias(name, alias, str(version))


def get_version(name: str, ref: str):
    """The ModelVersion that ``ref`` (a version number or an alias) names; ModelNotFound otherwise."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFound(
            f"registered model {name!r} has no version or alias {ref!r}; see `mtc models list`"
        ) from None


def resolve_uri(model_uri: str) -> str:
    """A registry alias (``models:/NAME@ALIAS``) as the concrete ``models:/NAME/VERSION`` it points at now."""
    if not model_uri.startswith("models:/"):
        return model_uri
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    return f"models:/{name}/{get_version(name, alias).version}" if alias else model_uri


def download(model_uri: str, folder: Path) -> Path:
    """Download a logged model into ``folder``; returns ``folder``."""
    import mlflow

    try:
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder))
    except mlflow.exceptions.MlflowException as err:
        raise ModelNotFound(f"cannot load {model_uri}: {str(err).splitlines()[0]}") from None
    return Path(folder)


def bundle_in(folder: Path) -> ModelBundle:
    """The bundle of a model that ``download`` wrote into ``folder``: weights and JSON only, none of its code."""
    return ModelBundle.load(Path(folder) / "artifacts" / BUNDLE)


def load_bundle(model_uri: str) -> ModelBundle:
    """The bundle of a logged model (``models:/mtc@champion``, ``models:/mtc/3``, ``runs:/RUN/mtc_model``)."""
    with tempfile.TemporaryDirectory() as folder:
        return bundle_in(download(resolve_uri(model_uri), Path(folder)))


def load_source(source: str) -> tuple[str, ModelBundle]:
    """A model to start from: a logged model's URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN/mtc_model``) or a bundle folder (``model.pt`` + ``model.json``).

    Returns:
        (where it came from, concrete: ``models:/NAME/VERSION`` for an alias, the absolute folder; the bundle).
    """
    if source.startswith(("models:/", "runs:/")):
        uri = resolve_uri(source)
        return uri, load_bundle(uri)
    folder = Path(source)
    if not folder.is_dir():
        raise ModelNotFound(
            f"{source} is neither a model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/mtc_model) nor "
            "a folder holding model.pt and model.json"
        )
    return str(folder.resolve()), ModelBundle.load(folder)


def load_predictor(model_uri: str, device: str = "cpu", precision: str = "float32"):
    """A StructurePredictor of a logged model (``models:/mtc@champion``, ``runs:/RUN/mtc_model``...) on ``device``,
    its convolutions in ``precision`` (float32 or bfloat16)."""
    from mtc.predict.predictor import StructurePredictor

    return StructurePredictor(load_bundle(model_uri), device, precision=precision)


def list_versions(name: str | None = None) -> list[dict]:
    """Every version of every registered model (or of ``name``), newest first, with its aliases."""
    import mlflow

    client = mlflow.MlflowClient()
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        model = _registered(client, model_name)
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for v in client.search_model_versions(f"name='{model_name}'"):
            rows.append(
                {
                    "name": model_name,
                    "version": str(v.version),
                    "aliases": sorted(aliases.get(str(v.version), [])),
                    "run_id": v.run_id,
                    "created": v.creation_timestamp,
                    "status": v.status,
                }
            )
    return sorted(rows, key=lambda r: (r["name"], -int(r["version"])))


def _registered(client, name: str):
    import mlflow

    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFound(
            f"no registered model named {name!r}: train one with `mtc train --register {name}`"
        ) from None


def describe_version(name: str, version: str) -> dict:
    """Version (a number or an alias), aliases, source run, task names and test metrics."""
    import mlflow

    from mtc.train.metrics import split_metrics

    client = mlflow.MlflowClient()
    model = _registered(client, name)
    mv = get_version(name, version)
    run = client.get_run(mv.run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(mv.version))
    tasks = sorted(split_metrics(metrics, "test"))
    return {"version": mv.version, "aliases": aliases, "run_id": mv.run_id, "tasks": tasks, "metrics": metrics}
