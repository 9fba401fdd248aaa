"""What every command shares: the consoles, clean error messages, progress, short task names."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mtc.cluster import LOCAL_CORES, LOCAL_ROWS, Engine
from mtc.errors import MtcError
from mtc.screen.processes import LOCAL_PROCESS_UNITS, UNIT_ROWS

console = Console(highlight=False)
console.soft_wrap = not console.is_terminal  # a log keeps each line whole (tables still fit the width)
err_console = Console(stderr=True, highlight=False)

Update = Callable[..., None]  # update(done, total, detail="")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn an MtcError (a mistake the user can fix) into a one-line message and exit code 2."""
    try:
        yield
    except MtcError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)  # "[2, 3]" is text
        raise typer.Exit(2) from None


@contextlib.contextmanager
def progress(
    what: str, unit: str | None = "structures", every: float = 5.0, keep_lines: bool = False
) -> Iterator[Update]:
    """Yields ``update(done, total, detail="")``: a rich bar on a terminal, plain lines in a log.

    When stdout is not a terminal (a file, a pipe, Ray Jobs, CI), each update prints one line to stdout, at most
    every ``every`` seconds (and always the last): ``what done/total unit (pct): rate unit/s, detail, ETA ..``.
    ``unit=None`` leaves the rate out (the caller's detail carries its own). ``keep_lines`` also prints every
    line above the bar on a terminal (training epochs are worth keeping on screen).
    """
    started = time.monotonic()
    first: list[float] = []  # (time, done) of the first update: later rates leave start-up out
    last_line = started

    def line(done: int, total: int | None, detail: str) -> str:
        now = time.monotonic()
        since, before = first if first and done > first[1] else (started, 0)
        recent = (done - before) / max(now - since, 1e-9)  # for the ETA: start-up left out once it can be
        head = f"{what} {done:,}/{total:,}" if total else f"{what} {done:,}"
        parts = [detail] if detail else []
        if unit:
            head += f" {unit}" + (f" ({done / total:.0%})" if total else "")
            parts.insert(0, f"{done / max(now - started, 1e-9):,.0f} {unit}/s")
        if total and recent > 0 and done < total:
            parts.append(f"ETA {clock((total - done) / recent)}")
        return f"{head}: {', '.join(parts)}" if parts else head

    if console.is_terminal:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        columns += [TimeRemainingColumn(), TextColumn("{task.fields[detail]}")]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(what, total=None, detail="")

            def update(done: int, total: int | None, detail: str = "") -> None:
                if keep_lines:
                    bar.console.print(line(done, total, detail), markup=False, soft_wrap=True)
                first[:] = first or [time.monotonic(), done]
                bar.update(task, completed=done, total=total, detail=detail)

            yield update
        return

    def update(done: int, total: int | None, detail: str = "") -> None:
        nonlocal last_line
        now = time.monotonic()
        if now - last_line >= every or (total is not None and done >= total):
            console.print(line(done, total, detail), markup=False, soft_wrap=True)
            last_line = now
        first[:] = first or [now, done]

    yield update


def clock(seconds: float) -> str:
    """45s, 3m05s, 2h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


BUDGET_HELP = "Start no trial after this many minutes; the report covers what finished, --resume runs the rest."


class _NoIncompleteTrialsLine(logging.Filter):
    """Drops Tune's closing ``ERROR ... Trials did not complete: [...]``: mtc's own line per trial says which were
    not started (the budget) and which failed (with their error file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trials did not complete")


_NO_INCOMPLETE_TRIALS_LINE = _NoIncompleteTrialsLine()


def quiet_budget_errors(budget_minutes: float | None) -> None:
    """With a time budget, trials past it end as errors (so a resume runs them): keep Tune from printing a
    traceback for each, an "errored after 0 iterations ... Error file" line for each (its new output engine prints
    them even at verbosity 0; the legacy one, at the 0 mtc runs Tune with, prints nothing), and an ERROR line listing
    them. mtc's own line per trial says which were not started and which failed, naming the error file."""
    if budget_minutes is not None:
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray.tune.tune").addFilter(_NO_INCOMPLETE_TRIALS_LINE)


def abbreviations(tasks: list[str]) -> dict[str, str]:
    """Initials of multi-word task names (formation_energy_per_atom -> fepa), unless they would collide."""
    short = {t: "".join(p[0] for p in t.split("_") if p) if "_" in t else t for t in tasks}
    return short if len(set(short.values())) == len(tasks) else {t: t for t in tasks}


def legend(short: Mapping[str, str], units: Mapping[str, str] | None = None) -> str:
    """``fepa = formation_energy_per_atom (eV/atom), bg = band_gap (eV)``: what the short names stand for."""
    units = units or {}
    entries = []
    for task, name in short.items():
        unit = f" ({units[task]})" if units.get(task) else ""
        if name != task or unit:
            entries.append(f"{name} = {task}{unit}" if name != task else f"{task}{unit}")
    return ", ".join(entries)


def echo(line: str) -> None:
    """One plain progress line (module level: Tune pickles the callbacks that call it by reference)."""
    console.print(line, markup=False, soft_wrap=True)


class Precision(str, enum.Enum):
    """``--precision``: of the frozen forward's convolutions (``mtc.model.inference``)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


def warn_emulated_bfloat16(fix: str) -> None:
    """One warning line, before any work, when bfloat16 would run on CPUs without bfloat16 instructions: emulated
    there, it is slower than float32 (``mtc.preflight.cpus_without_bfloat16``). ``fix`` says how to turn it off."""
    from mtc.preflight import cpus_without_bfloat16

    slow = cpus_without_bfloat16()
    if slow:
        console.print(
            f"[yellow]warning[/]: {', '.join(slow)} {'has' if len(slow) == 1 else 'have'} no bfloat16 instructions "
            f"(AVX512-BF16, AMX): bfloat16 runs emulated there and slower than float32; {fix}",
            soft_wrap=True,
        )


PRECISION_HELP = (
    "float32, or bfloat16 convolutions: faster where the CPU has bfloat16 instructions (AVX512-BF16, AMX), "
    "predictions moved by a small part of the model's test error (README: bfloat16)."
)


class EngineKind(str, enum.Enum):
    """``--engine``: where a featurize or screen runs (``mtc.cluster.Engine``)."""

    auto = "auto"
    ray = "ray"
    local = "local"


# What the local engine runs a job in.
LOCAL_WORK = {
    "featurize": "this process",
    "screen": f"this process, and on a CPU a process per further core from {LOCAL_PROCESS_UNITS * UNIT_ROWS:,} "
    "structures on",
}
WORKERS_HELP = "Scoring actors on Ray, processes on the local engine (default: one per CPU, or per GPU)."


def engine_help(job: str) -> str:
    return (
        "Where the work runs: ray (Ray Data on the cluster at --address, else a Ray started here), local (no Ray, "
        f"no start-up cost: {LOCAL_WORK[job]}) or auto: local when there is no --address / RAY_ADDRESS and the "
        f"input holds under {LOCAL_ROWS[job]:,} structures or this machine has {LOCAL_CORES} cores or fewer, else "
        "ray. Both write the same output."
    )


def engine(
    kind: EngineKind, address: str | None, paths: Mapping[str, Path], precision: Precision = Precision.float32
) -> Engine:
    """The engine a command asked for: it prints where the work runs and, on Ray, checks that every node sees
    ``paths`` (option name -> path) before any work; a bfloat16 ``precision`` warns where it would be emulated."""

    def started(where: str, description: str) -> None:
        console.print(description)
        if precision is Precision.bfloat16 and not forward_on_gpus(where):
            warn_emulated_bfloat16("leave out --precision bfloat16")
        if where == "ray":
            from mtc.preflight import check_shared_paths

            check_shared_paths(paths)

    return Engine(kind.value, address, started)


def forward_on_gpus(where: str) -> bool:
    """Whether a screen's forward pass runs on GPUs: the cluster's (``where`` ray) or this machine's (local)."""
    if where == "ray":
        import ray

        return bool(ray.cluster_resources().get("GPU"))
    from mtc.screen.score import gpu_available

    return gpu_available()
