"""The local engine's worker processes: a screen without Ray on a multi-core CPU scores its units in this process
and in one worker process per further core, each with one torch thread, building its own graphs.

One process with torch threads on every core builds the graphs on one of them (the graph builder holds the GIL),
so on 2 cores a third of a large screen ran on one core; a process per core builds graphs and runs the forward
pass on each (README "Speed"). A worker process is spawned (a fresh interpreter: nothing of this process's
threads is inherited), imports torch and loads the model's weights from the output folder (~1.5 s); this process
scores units meanwhile, so a worker only pays on screens of several units (``LOCAL_PROCESS_UNITS``). Every unit is
written whole by whichever process scored it (``UnitScorer``), so an interrupted screen resumes as any other.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from mtc.errors import MtcError

# Rows of a unit of work: a screen's (and embed's) default.
UNIT_ROWS = 1024
# Pending units from which the local engine on a CPU adds worker processes (one per further core): below it a
# worker's start-up (~1.5 s on one core) costs more than it saves against torch threads on every core.
LOCAL_PROCESS_UNITS = 8
# Units queued per worker process: one running and one waiting, so a worker never idles while this process is busy
# scoring its own unit.
QUEUED_PER_WORKER = 2

_scorer = None  # a worker process's ``ScreenActor``


def _start_worker(scorer_args: tuple) -> None:
    """A worker's initializer: Ctrl-C is this process's to handle; load the model (one torch thread)."""
    global _scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mtc.screen.score import ScreenActor

    _scorer = ScreenActor(*scorer_args)


def _score_in_worker(unit: dict) -> dict:
    return _scorer.score_unit(unit)


def score_in_processes(units: list[dict], scorer, scorer_args: tuple, processes: int) -> Iterator[dict]:
    """Score ``units`` with ``scorer`` here and ``processes - 1`` worker processes; yields each unit's counts.

    Args:
        units: Units of ``plan_units``, none of them done.
        scorer: This process's ``UnitScorer`` (one torch thread).
        scorer_args: ``ScreenActor``'s arguments (model folder, output folder, batching, output), for the workers.
        processes: This process and its workers.
    """
    queue = deque(units)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(processes - 1, mp_context=context, initializer=_start_worker, initargs=(scorer_args,))
    queued: set[Future] = set()
    try:
        while queue or queued:
            while queue and len(queued) < QUEUED_PER_WORKER * (processes - 1):
                queued.add(pool.submit(_score_in_worker, queue.pop()))  # workers from the end, this process the front
            if queue:
                unit = queue.popleft()
                yield scorer.score_unit(unit)
                finished = {future for future in queued if future.done()}
            else:
                finished, _ = wait(queued, return_when=FIRST_COMPLETED)
            for future in finished:
                queued.discard(future)
                yield future.result()
    except BrokenProcessPool as err:
        raise MtcError(
            "a scoring process stopped (out of memory?); the finished parts are kept: run the same command again to "
            "score the rest, with --workers 1 to score in this process alone"
        ) from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
