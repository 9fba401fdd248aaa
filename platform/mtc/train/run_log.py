"""MLflow logging from rank 0 into the run the driver created (plain ``MlflowClient`` calls, no fluent state)."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtc.tasks import TaskSpec
from mtc.train.evaluate import Evaluation
from mtc.train.metrics import metric_key


class RunLogger:
    """Metrics per epoch, then the test predictions, parity plots and learning curves of the finished run.

    Epoch metrics wait in ``pending`` until ``flush`` (the loop flushes with each checkpoint, so what MLflow holds
    matches what a resumed run starts from): one store call per checkpoint, not per epoch.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[tuple[Mapping[str, float], int]] = []

    def add_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Keep an epoch's metrics for the next ``flush``."""
        self.pending.append((dict(metrics), step))

    def flush(self) -> None:
        """Log every pending epoch's metrics in one call."""
        if self.pending:
            self._log([(k, v, step) for metrics, step in self.pending for k, v in metrics.items()])
            self.pending = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` now."""
        self._log([(k, v, step) for k, v in metrics.items()])

    def _log(self, values: list[tuple[str, float, int]]) -> None:
        """Finite values only (MLflow's own batching splits large batches)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v, step in values if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_final(self, final: Mapping[str, float], test: Evaluation, history: list[dict], tasks: Sequence[TaskSpec]):
        """Final metrics at step 0, ``predictions/test_predictions.parquet`` and ``plots/*.png`` (learning curves,
        parity per regression task, reliability per binary task)."""
        import pyarrow.parquet as pq

        from mtc.model.reliability import reliability
        from mtc.train.plots import learning_curves, parity_plot, reliability_plot

        self.log_metrics(final, step=0)
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            pq.write_table(test.table(), folder / "test_predictions.parquet")
            self.client.log_artifact(self.run_id, str(folder / "test_predictions.parquet"), "predictions")
            plots = folder / "plots"
            plots.mkdir()
            (plots / "learning_curves.png").write_bytes(learning_curves(history))
            for k, task in enumerate(tasks):
                rows = test.mask[:, k]
                if not rows.any():
                    continue
                if task.kind == "binary":
                    diagram = reliability(test.pred[rows, k], test.target[rows, k])
                    (plots / f"reliability_{task.name}.png").write_bytes(reliability_plot({"test": diagram}, task.name))
                    continue
                mae = final[metric_key("test", task.name, "mae")]
                png = parity_plot(test.pred[rows, k], test.target[rows, k], task.name, task.unit, mae)
                (plots / f"parity_{task.name}.png").write_bytes(png)
            self.client.log_artifacts(self.run_id, str(plots), "plots")
