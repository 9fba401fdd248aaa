"""MLflow "models from code" entry point: the logged model is this file plus the mtc package, no pickle."""

import mlflow

from mtc.registry.pyfunc import MtcPythonModel

mlflow.models.set_model(MtcPythonModel())
