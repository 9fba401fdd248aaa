"""The MLflow pyfunc flavour of an mtc model (``mlflow models serve``): raw structures in, one column per task out.

The logged model holds the bundle (``model.pt`` state_dict + ``model.json``) as an artifact and the
mtc package as code; no module or weights are pickled.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class MtcPythonModel(mlflow.pyfunc.PythonModel):
    """Input: a table with ``id`` (optional) and ``cif`` text, a pymatgen ``structure`` dict/JSON, or
    ``lattice``/``species``/``frac_coords``. Output: one row per input row, in order: ``id``, one column per task
    (and ``<task>_probability`` for binary tasks), and ``error`` (null, or why the row could not be scored).
    An ensemble adds ``<task>_std``, ``<task>_lo`` and ``<task>_hi`` (``params={"interval": 0.9}``)."""

    def load_context(self, context) -> None:
        from mtc.model.bundle import ModelBundle
        from mtc.predict.predictor import StructurePredictor

        self.predictor = StructurePredictor(ModelBundle.load(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mtc.predict.inputs import records_from_frame

        predictor = self.predictor
        if params and "interval" in params and self.predictor.bundle.n_members > 1:
            predictor = predictor.with_interval(float(params["interval"]))
        out = predictor.predict_rows(records_from_frame(model_input)).to_pandas()
        # None, not NaN, for "no error": NaN is not JSON, and REST clients test `error is None`
        out["error"] = pd.Series([e if isinstance(e, str) else None for e in out["error"]], dtype=object)
        return out
