"""The MLflow pyfunc flavour of an mtc model: raw structures in, one column per task out.

The logged model holds the bundle (``model.pt`` state_dict + ``model.json``) as an artifact and the
mtc package as code; no module or weights are pickled.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import pandas as pd
import pyarrow as pa

STRUCTURE_COLUMNS = ("cif", "structure", "lattice", "species", "frac_coords")


class MtcPythonModel(mlflow.pyfunc.PythonModel):
    """Input: a table with ``id`` (optional) and ``cif`` text, a pymatgen ``structure`` dict/JSON, or
    ``lattice``/``species``/``frac_coords``. Output: ``id``, one column per task (and
    ``<task>_probability`` for binary tasks), and ``error`` (null, or why the row could not be scored)."""

    def load_context(self, context) -> None:
        from mtc.model.bundle import ModelBundle
        from mtc.registry.predictor import StructurePredictor

        self.predictor = StructurePredictor(ModelBundle.load(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        records = to_records(model_input)
        predictions, rejected = self.predictor.predict_records(records)
        scored = predictions.to_pandas().set_index("id")
        errors = {r["id"]: f"{r['reason']}: {r['detail']}" for r in rejected.to_pylist()}
        out = pd.DataFrame({"id": records.column("id").to_pylist()})
        for name in self.predictor.output_names():
            out[name] = out["id"].map(scored[name]) if len(scored) else float("nan")
        out["error"] = pd.Series([errors.get(i) for i in out["id"]], dtype=object)
        return out


def to_records(frame: pd.DataFrame) -> pa.Table:
    """A pandas input as the records the featurizer reads (ids default to the row number)."""
    if not any(c in frame.columns for c in STRUCTURE_COLUMNS):
        raise ValueError(
            f"input needs a 'cif', 'structure' or 'lattice'/'species'/'frac_coords' column; got {list(frame.columns)}"
        )
    frame = frame.copy()
    ids = frame["id"].astype(str) if "id" in frame.columns else pd.Series(range(len(frame))).astype(str)
    frame["id"] = ids.to_numpy()
    if "structure" in frame.columns:
        frame["structure"] = [s if isinstance(s, str) or s is None else json.dumps(s) for s in frame["structure"]]
    keep = ["id", *(c for c in STRUCTURE_COLUMNS if c in frame.columns)]
    rows = frame[keep].to_dict(orient="records")
    for row in rows:
        for key in ("lattice", "frac_coords", "species"):
            if key in row and hasattr(row[key], "tolist"):
                row[key] = [list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in row[key]]
    return pa.Table.from_pylist(
        [{"id": r["id"], "source": f"row {i}", "json": json.dumps(r, default=_plain)} for i, r in enumerate(rows)]
    )


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)
