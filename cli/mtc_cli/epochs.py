"""Training progress on the driver: one line per epoch, from the reports of Ray Train's rank 0.

Ray Train V2 calls a ``UserCallback`` in its controller actor, whose stdout does not reach the driver
(``log_to_driver=False``). So the callback only puts each report on a Ray queue, and a thread of the driver
turns it into a progress update: a bar on a terminal, a plain line per epoch in a log.
"""

from __future__ import annotations

import contextlib
import queue as stdlib_queue
import threading
from collections.abc import Iterator

import ray
import ray.train
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mtc_cli.common import abbreviations, console, legend, progress


class ReportRelay(ray.train.UserCallback):
    """Runs in the Ray Train controller: forwards rank 0's report of each ``ray.train.report`` to a queue."""

    def __init__(self, reports: Queue):
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        # progress is a courtesy: a lost queue (its node died) must never fail the training it reports on
        with contextlib.suppress(ray.exceptions.RayError):
            self.reports.put(dict(metrics[0]), timeout=5)


def epoch_summary(report: dict, short: dict[str, str]) -> str:
    """``train loss 0.41, val MAE fepa 0.112 bg 0.52, AUC im 0.91, lr 0.003, 812 crystals/s``."""
    from mtc.train.metrics import split_metrics

    val = split_metrics(report, "val")
    mae = [f"{name} {val[task]['mae']:.4g}" for task, name in short.items() if "mae" in val.get(task, {})]
    auc = [f"{name} {val[task]['auc']:.3f}" for task, name in short.items() if "auc" in val.get(task, {})]
    parts = [f"train loss {report['train_loss']:.4g}"]
    parts += [f"val MAE {' '.join(mae)}"] if mae else []
    parts += [f"AUC {' '.join(auc)}"] if auc else []
    parts += [f"lr {report['lr']:.3g}", f"{report['crystals_per_s']:,.0f} crystals/s"]
    return ", ".join(parts)


@contextlib.contextmanager
def epoch_progress(config) -> Iterator[list[ray.train.UserCallback]]:
    """Yields the Ray Train callbacks to pass to ``train``; shows each epoch while training runs."""
    short = abbreviations([t.name for t in config.tasks])
    console.print(f"tasks: {legend(short, {t.name: t.unit for t in config.tasks})}", soft_wrap=True)
    # the queue lives on the driver's node: a worker node that dies takes no progress line with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    reports = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    finished = threading.Event()

    def show(update) -> None:
        while True:
            try:
                report = reports.get(timeout=0.5)
            except (stdlib_queue.Empty, ray.exceptions.RayError):
                if finished.is_set():
                    return
                continue
            if "epoch" in report:  # the final report (test metrics) has none
                total = int(report.get("planned_epochs", config.epochs))  # a time budget plans them
                update(int(report["epoch"]), total, epoch_summary(report, short))

    with progress("epoch", unit=None, every=0, keep_lines=True) as update:
        shower = threading.Thread(target=show, args=(update,), daemon=True)
        shower.start()
        try:
            yield [ReportRelay(reports)]
        finally:
            finished.set()
            shower.join(timeout=10)
            with contextlib.suppress(ray.exceptions.RayError):
                reports.shutdown()
