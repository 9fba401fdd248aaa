"""Log, register, promote and load mtc models in MLflow (aliases, never stages)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mtc.errors import MtcError
from mtc.model.bundle import ModelBundle

DEFAULT_NAME = "mtc"
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
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", c, required=False) for c in ("id", "cif", "structure")])
    outputs = [ColSpec("string", "id")]
    for task in bundle.model_config["tasks"]:
        if task["kind"] == "binary":
            outputs += [ColSpec("integer", task["name"]), ColSpec("float", f"{task['name']}_probability")]
        else:
            outputs.append(ColSpec("float", task["name"]))
    outputs.append(ColSpec("string", "error", required=False))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def log_model(run_id: str, bundle: ModelBundle, register: str | None = DEFAULT_NAME) -> dict:
    """Log ``bundle`` as a pyfunc model of ``run_id`` and register a new version under ``register``.

    Returns:
        ``{"model_uri": ..., "name": ..., "version": ...}`` (name/version None when not registered).
    """
    import mlflow

    import mtc

    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
        bundle_dir = bundle.save(Path(folder) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="mtc_model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(Path(mtc.__file__).parent)],
            signature=_signature(bundle),
            input_example=example_input(),
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=register,
        )
    version = info.registered_model_version
    return {"model_uri": info.model_uri, "name": register, "version": str(version) if version else None}


def promote(name: str, version: str, alias: str = "champion") -> None:
    """Point ``alias`` (e.g. champion) at ``version`` of registered model ``name``."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise ModelNotFound(f"registered model {name!r} has no version {version}: see `mtc models list`") from None
    client.set_registered_model_alias(name, alias, str(version))


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


def load_predictor(model_uri: str):
    """The StructurePredictor inside a logged pyfunc model (``models:/mtc@champion``, ``models:/mtc/3``...)."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as err:
        raise ModelNotFound(f"cannot load {model_uri}: {str(err).splitlines()[0]}") from None
    return model.unwrap_python_model().predictor


def describe_version(name: str, version: str) -> dict:
    """Version (a number or an alias), aliases, source run, task names and test metrics."""
    import mlflow

    client = mlflow.MlflowClient()
    model = _registered(client, name)
    try:
        mv = (
            client.get_model_version(name, version)
            if version.isdigit()
            else client.get_model_version_by_alias(name, version)
        )
    except mlflow.exceptions.MlflowException:
        raise ModelNotFound(f"registered model {name!r} has no version or alias {version!r}") from None
    run = client.get_run(mv.run_id)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    tasks = sorted({k.split("/")[1] for k in metrics if k.count("/") == 2})
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(mv.version))
    return {"version": mv.version, "aliases": aliases, "run_id": mv.run_id, "tasks": tasks, "metrics": metrics}
