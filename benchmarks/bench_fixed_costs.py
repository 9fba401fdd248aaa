"""Fixed costs of ``mtc featurize`` and ``mtc screen`` as a new user meets them: the real CLI, one subprocess a run.

    .venv/bin/python benchmarks/bench_fixed_costs.py [--n-featurize 20000] [--n-screen 10 4000] [--repeats 2]
        [--model models:/NAME@ALIAS] [--before PATH] [--variants before ray auto] [--data PATH]

Every run is the real CLI in a fresh process, into a fresh output folder, with a private MTC_HOME, as a user types
it: this script with ``--probe ARGS`` calls the ``mtc`` entry point (``mtc_cli.app.main``) with ARGS, exactly what
``python -m mtc_cli ARGS`` does, and stamps when each part ends (imports, MLflow set-up, input scan, Ray start,
model download and load, first and last result, exit; the real functions run, only wrapped), so that each run's
time splits into its parts.
- ``mtc --help`` (``python -m mtc_cli --help``) beside ``python -c pass``, and the heaviest imports of ``--help`` and
  of a screen (``-X importtime``);
- ``mtc featurize`` of the first ``--n-featurize`` crystals (JSONL.gz, mp36k layout);
- ``mtc screen`` of the first 10 and 4,000 crystals (Parquet), with ``--model`` (default: the shipped ``mp36k-mt3``,
  pulled into the private store first, timed once). A screen's fixed cost is its time at 10 structures.

Variants, alternating within each repeat: ``before`` (``--before PATH``: another checkout, e.g. ``git archive main``
unpacked, run the same way; its only path is Ray), ``ray`` (this checkout, ``--engine ray``) and ``auto`` (this
checkout as a user runs it: no ``--engine``). The best of ``--repeats`` runs is reported with its parts, all are
printed, with each run's CPU seconds (user + system of the process tree it waited for): on a crowded machine wall
time is CPU time stretched by the others' load. The CGCNN-style builder of ``bench_featurize.py`` (a) is timed on
``--baseline-n`` crystals spread over the featurized ones: the target is ``mtc featurize`` end to end >= 20x its rate.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_data import REPO, add_data_option, first_lines
from bench_epoch import RAY_START_FAILED

T_START = time.time()  # when a probe's interpreter got here, past these imports (see --probe)

PARTS = {  # part -> (stamp where it starts, stamp where it ends); a part whose stamps are missing took no time
    "interpreter + CLI imports": ("start", "cli imported"),
    "library imports": ("cli imported", "libraries imported"),
    "MLflow set-up": ("configure start", "configure"),
    "input scan": ("scan start", "scan"),
    "Ray start": ("connect start", "connect"),
    "model resolve + download": ("resolve_uri start", "download"),
    "model load (driver)": ("predictor start", "predictor"),
    "first result (Ray: actors + first unit)": ("work start", "first result"),
    "rest of the work": ("first result", "last result"),
    "exit (Ray shutdown...)": ("command done", "exit"),
}


# ------------------------------------------------------------------------------------------------------- the probe


def probe(cli_args: list[str]) -> None:
    """Run the CLI in this process with stamps (``BENCH_STAMPS``: a file, one ``name<TAB>seconds`` line each, seconds
    since ``BENCH_T0``, the parent's clock when it started this process). Only wraps: every real function runs."""
    t0, path = float(os.environ["BENCH_T0"]), Path(os.environ["BENCH_STAMPS"])

    def stamp(name: str) -> None:
        with path.open("a") as fh:
            fh.write(f"{name}\t{time.time() - t0:.4f}\n")

    def timed(owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            stamp(f"{name} start")
            try:
                return fn(*args, **kwargs)
            finally:
                stamp(name)

        setattr(owner, attr, wrapped)

    def watched(owner, attr: str) -> None:
        """``owner.attr(..., on_progress=f)``: stamps when the work starts, its first and its last result."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapped(*args, on_progress=None, **kwargs):
            def update(done, total, *rest):
                stamp("first result" if not seen else "last result")
                seen.append(done)
                if on_progress:
                    on_progress(done, total, *rest)

            seen: list[int] = []
            return fn(*args, on_progress=update, **kwargs)

        setattr(owner, attr, wrapped)

    stamp("start")
    with path.open("a") as fh:
        fh.write(f"interpreter\t{T_START - t0:.4f}\n")
    from mtc_cli.app import main

    stamp("cli imported")
    import mtc.cluster
    import mtc.tracking

    if cli_args[0] == "featurize":
        import mtc.data.featurize as job

        timed(job, "scan_source", "scan")
        writer = job.ShardWriter

        def opened(*args, **kwargs):  # made right before the first batch is asked for
            made = writer(*args, **kwargs)
            stamp("work start")
            return made

        job.ShardWriter = opened
        watched(job, "featurize")
    else:
        import mtc.screen.score as job

        timed(job, "resolve_uri", "resolve_uri")
        timed(job, "download", "download")
        predictor = job.StructurePredictor

        def loaded(*args, **kwargs):
            stamp("predictor start")
            made = predictor(*args, **kwargs)
            stamp("predictor")
            stamp("work start")
            return made

        job.StructurePredictor = loaded
        watched(job, "screen")
    stamp("libraries imported")
    timed(mtc.tracking, "configure", "configure")
    timed(mtc.cluster, "connect", "connect")
    sys.argv = ["mtc", *cli_args]
    try:
        main()  # what the ``mtc`` script runs, its exit included
    finally:
        stamp("command done")


# ------------------------------------------------------------------------------------------------------ the runs


def environment(checkout: Path, home: Path) -> dict[str, str]:
    """This machine's environment with ``checkout``'s mtc first on the path, a private store, no cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(checkout / "platform"), str(checkout / "cli"), str(REPO / "benchmarks")])
    return {**env, "MTC_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


def run(
    command: list[str], env: dict[str, str], cwd: Path, log: Path, stamps: Path | None = None, attempts: int = 3
) -> dict:
    """Runs ``command``; returns ``{"wall": s, "cpu": s, "stamps": {name: s}}``: wall seconds, CPU seconds (user +
    system of the process and of the descendants it waited for) and the probe's stamps, if any. A run whose embedded
    Ray missed its fixed 30 s start (a crowded machine) is tried again, up to ``attempts`` times."""
    for _ in range(attempts):
        if stamps is not None:
            stamps.unlink(missing_ok=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        extra = {"BENCH_T0": repr(started), **({"BENCH_STAMPS": str(stamps)} if stamps else {})}
        done = subprocess.run(command, env={**env, **extra}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wall = time.time() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.write_bytes(done.stdout)
        if RAY_START_FAILED not in done.stdout.decode():
            break
        print(f"  Ray did not start within its 30 s on this load: {shlex.join(command[2:6])} ...", flush=True)
    else:
        return {"wall": math.nan, "cpu": math.nan, "stamps": {}, "failed": "Ray did not start in 30 s"}
    if done.returncode:
        sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout.decode()[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    found = {}
    if stamps is not None:
        for line in stamps.read_text().splitlines():
            name, seconds = line.split("\t")
            found.setdefault(name, float(seconds))  # the first of each (the driver's model load, not a later one)
        if "last result" not in found and "first result" in found:
            found["last result"] = found["first result"]
        found["exit"] = wall
    return {"wall": wall, "cpu": cpu, "stamps": found}


def parts(stamps: dict[str, float]) -> dict[str, float]:
    """Seconds of each part of ``PARTS`` (0 when it did not happen), and what the stamps leave unexplained."""
    out = {name: stamps[b] - stamps[a] if a in stamps and b in stamps else 0.0 for name, (a, b) in PARTS.items()}
    out["other driver work"] = stamps["exit"] - sum(out.values())
    return out


def import_profile(command: list[str], env: dict[str, str], top: int = 6) -> tuple[float, list[tuple[str, float]]]:
    """``-X importtime`` of ``command``: (seconds of all imports, the ``top`` packages by their modules' seconds)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], env=env, capture_output=True, text=True)
    packages: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)", line)
        if match:
            packages[match.group(2).split(".")[0]] += int(match.group(1)) / 1e6
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])
    return sum(packages.values()), ranked[:top]


def cgcnn_rate(lines: list[str], n: int) -> float:
    """Structures/s of the CGCNN-style builder (bench_featurize.py (a)) on ``n`` crystals spread over ``lines``."""
    from bench_featurize import run_baseline

    step = max(1, len(lines) // n)
    subset = lines[::step][:n]
    seconds, _ = run_baseline(subset)
    return len(subset) / seconds


def write_inputs(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The featurize input (JSONL.gz) and one Parquet database per ``--n-screen``."""
    import gzip

    from bench_screen import structures_parquet

    src = work / f"mp{args.n_featurize}.jsonl.gz"
    with gzip.open(src, "wt") as fh:
        fh.writelines(first_lines(args.data, args.n_featurize))
    inputs = {"featurize": src}
    for n in args.n_screen:
        inputs[f"screen {n}"] = structures_parquet(args.data, n, work / f"db{n}.parquet")
    return inputs


def cli_args(job: str, inputs: dict[str, Path], out: Path, model: str) -> list[str]:
    if job == "featurize":
        return ["featurize", str(inputs[job]), "--out", str(out), "--label", "formation_energy_per_atom"]
    return ["screen", str(inputs[job]), "--out", str(out), "--model", model]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n-featurize", type=int, default=20_000)
    parser.add_argument("--n-screen", type=int, nargs="+", default=[10, 4000])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (best reported)")
    parser.add_argument("--baseline-n", type=int, default=200, help="crystals for the CGCNN-style builder")
    parser.add_argument("--model", default=None, help="model URI (default: the shipped mp36k-mt3, pulled first)")
    parser.add_argument("--before", type=Path, default=None, help="another mtc checkout: the baseline")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["before", "ray", "auto"],
        choices=["before", "ray", "auto"],
        help="which variants run (before: only with --before)",
    )
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    add_data_option(parser)
    if "--probe" in sys.argv:  # a child run: the CLI's own arguments follow
        probe(sys.argv[sys.argv.index("--probe") + 1 :])
        return
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fixed-costs-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    here = environment(REPO, home)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f} (other jobs skew it all)")
    inputs = write_inputs(args, work)
    lines = first_lines(args.data, args.n_featurize)
    model = args.model
    if model is None:
        pulled = run([sys.executable, "-m", "mtc_cli", "models", "pull", "mp36k-mt3"], here, work, work / "pull.log")
        model = "models:/mp36k-mt3@champion"
        print(f"model: shipped mp36k-mt3 pulled into the private store in {pulled['wall']:.1f} s (once)")

    variants = {"ray": (REPO, ["--engine", "ray"]), "auto": (REPO, [])}
    if args.before:
        variants = {"before": (args.before.resolve(), []), **variants}
    variants = {name: variant for name, variant in variants.items() if name in args.variants}
    envs = {name: environment(checkout, home) for name, (checkout, _) in variants.items()}

    print("\nimports (python -X importtime; seconds, the heaviest top-level packages):")
    print(f"  python -c pass: {run([sys.executable, '-c', 'pass'], here, work, work / 'pass.log')['wall']:.2f} s wall")
    for name, env in envs.items():
        help_wall = min(
            run([sys.executable, "-m", "mtc_cli", "--help"], env, work, work / "h.log")["wall"] for _ in range(2)
        )
        total, top = import_profile(["-m", "mtc_cli", "--help"], env)
        print(f"  {name:6s} mtc --help: {help_wall:.2f} s wall, imports {total:.2f} s: " + _ranked(top))
        code = "import mtc_cli.app, mtc.tracking, mtc.screen.score"
        total, top = import_profile(["-c", code], env)
        print(f"  {name:6s} a screen's imports: {total:.2f} s: " + _ranked(top))

    jobs = list(inputs)
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for repeat in range(args.repeats):
        for job in jobs:
            for name, (_, extra) in variants.items():
                out = work / "out" / f"{job}-{name}-{repeat}".replace(" ", "")
                command = [sys.executable, str(Path(__file__).resolve()), "--probe", *cli_args(job, inputs, out, model)]
                done = run([*command, *extra], envs[name], work, work / "run.log", work / "stamps.tsv")
                runs[job, name].append(done)
                load = os.getloadavg()[0]
                print(
                    f"  {job:14s} {name:6s} {done['wall']:6.1f} s, CPU {done['cpu']:5.1f} s (load {load:.1f})",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)

    rate = cgcnn_rate(lines, args.baseline_n)
    report(args, jobs, variants, runs, rate)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _ranked(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{package} {seconds:.2f}" for package, seconds in top)


def report(args, jobs, variants, runs, cgcnn: float) -> None:
    names = list(variants)
    sizes = {"featurize": args.n_featurize, **{f"screen {n}": n for n in args.n_screen}}
    best = {
        key: min(done, key=lambda d: d["wall"] if d["wall"] == d["wall"] else math.inf) for key, done in runs.items()
    }
    print(f"\nend to end, the best of {args.repeats} run(s) (wall seconds, structures/s, CPU seconds):")
    ratios = "".join(f"{names[0] + '/' + n:>12s}" for n in names[1:])
    print(f"{'job':16s}" + "".join(f"{n:>30s}" for n in names) + ratios)
    for job in jobs:
        cells = "".join(
            f"{best[job, n]['wall']:9.1f} s {sizes[job] / best[job, n]['wall']:7.0f}/s {best[job, n]['cpu']:6.1f} s"
            for n in names
        )
        ratios = "".join(f"{best[job, names[0]]['wall'] / best[job, n]['wall']:11.2f}x" for n in names[1:])
        print(f"{job:16s}{cells}{ratios}")
    print(
        "all runs (wall s): "
        + "; ".join(f"{j} {n} " + ", ".join(f"{d['wall']:.1f}" for d in runs[j, n]) for j, n in runs)
    )
    rates = {n: args.n_featurize / best["featurize", n]["wall"] for n in names}
    print(
        f"\nCGCNN-style builder (bench_featurize.py (a)), {args.baseline_n} crystals spread over the "
        f"{args.n_featurize:,}: {cgcnn:.0f} structures/s; mtc featurize end to end: "
        + ", ".join(f"{n} {rates[n] / cgcnn:.1f}x" for n in names)
        + " (target >= 20x)"
    )
    small = f"screen {min(args.n_screen)}"
    print(
        f"a screen's fixed cost (the {small} run): "
        + ", ".join(f"{n} {best[small, n]['wall']:.1f} s" for n in names)
        + " (target <= 5 s on the embedded Ray)"
    )
    for job in jobs:
        print(f"\nparts of the best run of {job} (wall seconds, from the probe's stamps):")
        split = {n: parts(best[job, n]["stamps"]) if best[job, n]["stamps"] else defaultdict(float) for n in names}
        print(f"  {'part':40s}" + "".join(f"{n:>9s}" for n in names))
        for part in [*PARTS, "other driver work"]:
            print(f"  {part:40s}" + "".join(f"{split[n][part]:9.2f}" for n in names))
        print(f"  {'wall':40s}" + "".join(f"{best[job, n]['wall']:9.2f}" for n in names))
    stamps = {f"{j}/{n}": d["stamps"] for (j, n), d in best.items()}
    print("\nstamps of the best runs (seconds since each run's start): " + json.dumps(stamps))


if __name__ == "__main__":
    main()
