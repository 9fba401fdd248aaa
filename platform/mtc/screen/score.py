"""Score a database of structures with a registered model: predictions (``mtc screen``) or crystal embeddings
(``mtc embed``), the same path but for the ``Output`` each unit gets. On Ray, an actor pool (with GPUs, fed by
featurize tasks: two stages); for a small database, this process (a thread builds graphs ahead of the forward).

The database is Parquet (``id`` and a structure: cif | structure | lattice/species/frac_coords | json; a string
``source`` column, when present, names each row's origin in rejections), or a file ASE reads, converted once into
Parquet in the output folder (``mtc.screen.frames``).

The database is cut into *units* (a slice of one row group of one file). Each unit's predictions (or embeddings)
and rejections are written by an actor as ``predictions/part-<unit>.parquet`` (``embeddings/...``) and
``rejected/part-<unit>.parquet``, atomically, rejections first; a unit whose output part exists is done. Each
folder reads as one Parquet dataset (``pandas.read_parquet(OUT / "predictions")``). A screen that is killed and
run again scores only the units left, and every input id ends up exactly once in the output; a rerun whose
database content or model differs from what the folder holds is refused before any work.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtc.atomic import write_json_atomic, write_parquet_atomic
from mtc.cluster import Engine, local_cores, ray_version
from mtc.config import FeaturizeConfig
from mtc.data.featurize import featurize_table
from mtc.data.frames import frame_files, frames_kind
from mtc.data.ipc import from_ipc, to_ipc
from mtc.data.packing import Batching
from mtc.data.shards import REJECTED_SCHEMA, hash_files
from mtc.data.sources import duplicate_ids
from mtc.errors import MtcError
from mtc.predict.predictor import (
    DEFAULT_BATCHING,
    DEFAULT_INTERVAL,
    StructurePredictor,
    check_interval,
    check_precision,
)
from mtc.registry.models import bundle_in, download, resolve_uri
from mtc.screen.frames import RECORDS, frames_database, scan_frames
from mtc.screen.output import EMBEDDINGS, PREDICTIONS, RECORD_COLUMNS, Output, key_columns
from mtc.screen.processes import LOCAL_PROCESS_UNITS, UNIT_ROWS, score_in_processes
from mtc.screen.rank import check_selection, select

REJECTED, MODEL_DIR = "rejected", "model"
# The local engine on a GPU builds graphs in a thread this many slices of records ahead of the forward pass. On CPUs
# it builds them between forward passes, which get torch threads on every core: on 2 cores, 1.2-1.45x a graph thread
# beside one torch thread, on small and on large mp36k crystals (README "Screening"), and no third thread to stall
# torch's two at their barriers.
LOCAL_FEATURIZE_AHEAD = 4


class ScreenError(MtcError):
    """A database or output folder that cannot be screened as asked."""


SCREEN = Output()


@dataclass
class ScreenSummary:
    out: Path
    model: str
    n_input: int
    n_scored: int
    n_rejected: int
    n_resumed_units: int
    seconds: float
    rejected_by_reason: dict[str, int]
    selected: pa.Table | None

    @property
    def throughput(self) -> float:
        return self.n_input / self.seconds if self.seconds else float("nan")


def database_files(db: Path) -> list[Path]:
    """The database's Parquet files, as absolute paths (workers on other nodes get the same paths)."""
    db = Path(db).expanduser().resolve()
    files = sorted(db.glob("*.parquet")) if db.is_dir() else [db]
    if not db.exists() or not files:
        raise ScreenError(f"{db}: no Parquet database there (a .parquet file or a folder of them)")
    return files


def plan_units(files: list[Path], unit_rows: int) -> tuple[list[dict], int]:
    """Units covering every row of every file once; returns (units, total rows). Checks columns and ids."""
    units, ids = [], []
    for f_index, path in enumerate(files):
        meta = pq.ParquetFile(path)
        names = meta.schema_arrow.names
        if "id" not in names or not any(c in names for c in RECORD_COLUMNS):
            raise ScreenError(
                f"{path}: needs an 'id' column and one of {', '.join(RECORD_COLUMNS)}; it has {', '.join(names)}"
            )
        ids += pq.read_table(path, columns=["id"]).column("id").cast(pa.string()).to_pylist()
        for group in range(meta.num_row_groups):
            rows = meta.metadata.row_group(group).num_rows
            for start in range(0, rows, unit_rows):
                units.append(
                    {
                        "unit": f"{f_index:04d}-{group:05d}-{start:010d}",
                        "path": str(path),
                        "group": group,
                        "start": start,
                        "rows": min(unit_rows, rows - start),
                    }
                )
    duplicates = duplicate_ids(ids)
    if duplicates:
        raise ScreenError(f"duplicate ids in the database ({len(duplicates)}): {', '.join(duplicates[:10])}")
    return units, len(ids)


class UnitReader:
    """A unit's records: ``id`` (as strings), the structure payload, ``source`` (made from the row's place in the
    database when the input has none) and the ``keys`` columns; the last row group read is kept for the next unit."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self._cached: tuple[tuple[str, int], pa.Table] | None = None

    def __call__(self, unit: dict) -> pa.Table:
        key = (unit["path"], int(unit["group"]))
        if self._cached is None or self._cached[0] != key:
            meta = pq.ParquetFile(unit["path"])
            schema = meta.schema_arrow
            has_source = "source" in schema.names and pa.types.is_string(schema.field("source").type)
            columns = [c for c in ("id", *RECORD_COLUMNS) if c in schema.names] + ["source"] * has_source
            self._cached = (key, meta.read_row_group(key[1], columns=columns + self.keys))
        rows = self._cached[1].slice(int(unit["start"]), int(unit["rows"]))
        rows = rows.set_column(0, "id", rows.column("id").cast(pa.string()))
        if "source" in rows.column_names:
            return rows
        name = Path(unit["path"]).name
        first = int(unit["start"])
        sources = [f"{name} row-group {key[1]} row {first + i}" for i in range(rows.num_rows)]
        return rows.append_column("source", pa.array(sources, pa.string()))


class UnitScorer:
    """Scores whole units with a loaded predictor and writes their parts: in a Ray actor, or in this process.

    Called with a batch of units (the columns of ``plan_units``), or, as a two-stage screen's second stage, with
    units already featurized (``unit``, ``graphs`` and ``records``: Arrow IPC bytes from ``featurize_units``)."""

    def __init__(self, predictor: StructurePredictor, out: str, batching: Batching, output: Output):
        self.predictor = predictor
        self.out = Path(out)
        self.batching = batching
        self.output = output
        self.read = UnitReader(output.keys.names)

    def score_unit(self, unit: dict) -> dict:
        """One unit of ``plan_units`` (a dict of its fields), as ``__call__`` takes a batch of them."""
        return self({key: [value] for key, value in unit.items()})

    def __call__(self, units: dict) -> dict:
        done = {"unit": [], "scored": [], "rejected": []}
        for i in range(len(units["unit"])):
            if "graphs" in units:
                records, graphs = from_ipc(units["records"][i]), from_ipc(units["graphs"][i])
            else:
                records, graphs = self.read({k: units[k][i] for k in units}), None
            scored, rejected = self.output.score(self.predictor, records, self.batching, graphs)
            name = str(units["unit"][i])
            write_parquet_atomic(rejected, self.out / REJECTED / f"part-{name}.parquet")
            write_parquet_atomic(scored, self.out / self.output.folder / f"part-{name}.parquet")
            done["unit"].append(name)
            done["scored"].append(scored.num_rows)
            done["rejected"].append(rejected.num_rows)
        return done


def featurize_units(units: dict, config: FeaturizeConfig, keys: list[str]) -> dict:
    """A two-stage screen's first stage (Ray Data tasks): each unit's graph rows (``featurized_schema``, a reason
    on rejected rows) and its records' ``id`` and ``keys``, as Arrow IPC bytes, one row per unit."""
    read = UnitReader(keys)
    done = {"unit": [], "graphs": [], "records": []}
    for i in range(len(units["unit"])):
        records = read({k: units[k][i] for k in units})
        done["unit"].append(str(units["unit"][i]))
        done["graphs"].append(to_ipc(featurize_table(records, config, [])))
        done["records"].append(to_ipc(records.select(["id", *keys])))
    return done


class ScreenActor(UnitScorer):
    """A Ray Data actor: loads the model's weights once (none of its stored code), then scores the units it gets."""

    def __init__(self, model_dir: str, out: str, batching: Batching, output: Output):
        predictor = StructurePredictor(bundle_in(Path(model_dir)), interval=output.interval, precision=output.precision)
        # one CPU per actor: more threads only fight the other actors
        super().__init__(on_device(predictor, cpu_threads=1), out, batching, output)


def _read_parts(folder: Path, schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([schema.empty_table(), *(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet")))])


def _open_output(out: Path, files: list[Path], model_uri: str, unit_rows: int, output: Output) -> None:
    """Start ``out`` (download the model, record what is scored) or check that it holds this very pass."""
    state = {"db": [str(f) for f in files], "db_hash": hash_files(files), "model": model_uri, "unit_rows": unit_rows}
    if output.folder == EMBEDDINGS:
        state["task"] = output.task
    else:
        state["interval"], state["precision"] = output.interval, output.precision
    if (out / output.state).exists():
        previous = json.loads((out / output.state).read_text())
        if output.folder == PREDICTIONS:
            previous.setdefault("interval", DEFAULT_INTERVAL)  # screens of older mtc wrote no interval: 0.9
            previous.setdefault("precision", "float32")  # nor a precision
        changed = [what for key, what in _STATE_KEYS.items() if previous.get(key) != state.get(key)]
        if changed:
            raise ScreenError(
                f"{out} holds {output.folder} of other inputs ({', '.join(changed)} changed since it started); "
                "they would not match: choose a new --out, or delete it to start over"
            )
        return
    for folder in (output.folder, REJECTED):
        (out / folder).mkdir(parents=True, exist_ok=True)
        if any((out / folder).iterdir()):
            raise ScreenError(f"{out / folder} is not empty and {out} holds no {output.state}; choose a new --out")
    download(model_uri, out / MODEL_DIR)
    write_json_atomic(out / output.state, state)


_STATE_KEYS = {
    "db": "the database files",
    "db_hash": "the database content",
    "model": "the model",
    "unit_rows": "the unit size",
    "task": "the embedded task (--task)",
    "interval": "--interval",
    "precision": "--precision",
}


def screen(
    db: Path,
    model_uri: str,
    out: Path,
    batching: Batching = DEFAULT_BATCHING,
    unit_rows: int = UNIT_ROWS,
    workers: int | None = None,
    where: str | None = None,
    sort: str | None = None,
    desc: bool = False,
    top: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    interval: float = DEFAULT_INTERVAL,
    engine: Engine = Engine(),
    precision: str = "float32",
    stages: int | None = None,
) -> ScreenSummary:
    """Score every structure of ``db`` into ``out`` (resuming an interrupted screen of the same inputs).

    The database, the model, ``--where`` and ``--sort`` are checked before any structure is scored. An ensemble's
    ``<task>_lo`` / ``<task>_hi`` bound the central ``interval``. ``precision`` (float32 or bfloat16) is the frozen
    forward's (``mtc.model.inference``). ``engine`` says where the scoring runs: Ray's
    actors, or this process for a small database (``mtc.cluster.Engine``); both write the same folder. ``stages``
    (Ray only): 1, actors that featurize and score; 2, featurize tasks feeding scoring actors; None, 2 with GPUs.
    """
    summary, schema = score_database(
        db,
        model_uri,
        out,
        replace(SCREEN, interval=check_interval(interval), precision=check_precision(precision)),
        batching,
        unit_rows,
        workers,
        on_progress,
        check=lambda schema: check_selection(where, sort, schema),
        engine=engine,
        stages=stages,
    )
    if where or sort or top:
        summary.selected = select(_read_parts(summary.out / PREDICTIONS, schema), where, sort, desc, top)
        write_parquet_atomic(summary.selected, summary.out / "selected.parquet")
    return summary


def score_database(
    db: Path,
    model_uri: str,
    out: Path,
    output: Output,
    batching: Batching = DEFAULT_BATCHING,
    unit_rows: int = UNIT_ROWS,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    check: Callable[[pa.Schema], None] | None = None,
    engine: Engine = Engine(),
    stages: int | None = None,
) -> tuple[ScreenSummary, pa.Schema]:
    """Write ``output`` for every structure of ``db`` into ``out``, resuming an interrupted pass of the same inputs.

    The database and the model (and ``check``, given the output schema) are checked before any structure is scored.
    The units run on Ray (in ``stages``, see ``_score_on_ray``) or in this process, as ``engine`` chooses for the
    database's size.

    Returns:
        (the summary, without a selection; the schema of the output parts).
    """
    started = time.perf_counter()
    if stages not in (None, 1, 2):
        raise ScreenError(f"stages={stages}: 1 (actors featurize and score) or 2 (featurize tasks, scoring actors)")
    out = Path(out).expanduser().resolve()
    db = Path(db).expanduser().resolve()
    frames = frames_kind(db) is not None and not any(db.glob("*.parquet"))  # as featurize: Parquet first
    if frames:  # read before any work; converted once the output folder is known to hold this pass
        files, scanned = frame_files(db), scan_frames(db, out)
        n_rows = scanned.n_rows if scanned else pq.read_metadata(out / RECORDS).num_rows
    else:
        files = database_files(db)
        units, n_input = plan_units(files, unit_rows)
        n_rows = n_input
    where = engine.start("screen", n_rows)
    resolved = resolve_uri(model_uri)
    _open_output(out, files, resolved, unit_rows, output)
    if frames:
        records, n_rejected_on_reading = frames_database(out, out / REJECTED, scanned)
        units, n_input = plan_units([records], unit_rows)
        n_input += n_rejected_on_reading
    if output.folder == EMBEDDINGS:
        output = replace(output, keys=key_columns([records] if frames else files))
    ahead = LOCAL_FEATURIZE_AHEAD if where == "local" and gpu_available() else 0  # an actor: one CPU, no overlap
    predictor = StructurePredictor(
        bundle_in(out / MODEL_DIR), interval=output.interval, precision=output.precision, featurize_ahead=ahead
    )
    schema = output.schema(predictor)
    if check:
        check(schema)

    pending = [u for u in units if not (out / output.folder / f"part-{u['unit']}.parquet").exists()]
    n_resumed = len(units) - len(pending)
    if pending:
        with torch_threads_kept():
            processes = local_processes(workers, len(pending)) if where == "local" else 0
            if processes > 1:
                scorer = UnitScorer(on_device(predictor, cpu_threads=1), str(out), batching, output)
                worker_args = (str(out / MODEL_DIR), str(out), batching, output)
                finished = score_in_processes(pending, scorer, worker_args, processes)
            elif where == "local":
                scorer = UnitScorer(on_device(predictor, cpu_threads=local_cores()), str(out), batching, output)
                finished = (scorer.score_unit(u) for u in pending)
            else:
                finished = _score_on_ray(pending, out, batching, output, workers, stages, predictor.featurize_config)
            done_rows = sum(u["rows"] for u in units) - sum(u["rows"] for u in pending)
            for done in finished:
                done_rows += sum(done["scored"]) + sum(done["rejected"])
                if on_progress:
                    on_progress(done_rows, n_input)

    n_scored = sum(pq.read_metadata(p).num_rows for p in (out / output.folder).glob("part-*.parquet"))
    rejected = _read_parts(out / REJECTED, REJECTED_SCHEMA)
    if n_scored + rejected.num_rows != n_input:
        raise ScreenError(
            f"row accounting failed: {n_input} inputs, {n_scored} scored, "
            f"{rejected.num_rows} rejected; rerun the same command to finish the missing parts"
        )
    reasons: dict[str, int] = {}
    for reason in rejected.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    summary = ScreenSummary(
        out,
        resolved,
        n_input,
        n_scored,
        rejected.num_rows,
        n_resumed,
        time.perf_counter() - started,
        reasons,
        None,
    )
    return summary, schema


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restores this process's torch thread count on leaving: the local engine sets its own."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def local_processes(workers: int | None, n_units: int) -> int:
    """Processes a local screen of ``n_units`` pending units scores in: ``workers`` if given, else one per core on a
    CPU when there are ``LOCAL_PROCESS_UNITS`` or more (``mtc.screen.processes``); one with a GPU; never more than
    units."""
    if gpu_available():
        return 1
    wanted = workers or (local_cores() if n_units >= LOCAL_PROCESS_UNITS else 1)
    return max(1, min(wanted, n_units))


def on_device(predictor: StructurePredictor, cpu_threads: int | None = None) -> StructurePredictor:
    """``predictor`` on the GPU when there is one, else on the CPU with ``cpu_threads`` torch threads (None: as is)."""
    import torch

    if gpu_available():
        return predictor.to("cuda")
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    return predictor


@dataclass(frozen=True)
class ScoringPool:
    """The scoring actors of a Ray screen: how many, and the CPUs and GPUs each one reserves."""

    actors: int
    cpus_each: float
    gpus_each: float


def scoring_pool(stages: int, cpus: int, gpus: int, workers: int | None, n_units: int) -> ScoringPool:
    """The actor pool a screen in ``stages`` gets on a cluster of ``cpus`` and ``gpus`` (``workers``: asked for).

    One stage: an actor per CPU by default, each building its graphs on its own CPU; GPUs, if any, shared among the
    actors. Two stages: an actor per GPU (CPU-free: the featurize tasks get every CPU), or without GPUs half the
    CPUs, always leaving the featurize tasks one (a starved stage hangs silently). Never more actors than units.
    """
    if stages == 2 and not gpus and cpus < 2:
        raise ScreenError(
            f"a two-stage screen on CPUs needs 2 or more (Ray has {cpus}): one to featurize, one to score"
        )
    default = cpus if stages == 1 else gpus or max(1, cpus // 2)
    actors = max(1, min(workers or default, n_units))
    if stages == 2 and not gpus:
        actors = min(actors, cpus - 1)
    return ScoringPool(
        actors=actors,
        cpus_each=0 if stages == 2 and gpus else 1,
        gpus_each=min(1.0, gpus / actors) if gpus else 0,  # more actors than GPUs share them
    )


def _score_on_ray(
    pending: list[dict],
    out: Path,
    batching: Batching,
    output: Output,
    workers: int | None,
    stages: int | None,
    featurize_config: FeaturizeConfig,
) -> Iterator[dict]:
    """Score ``pending`` units on Ray Data; yields each finished unit's counts (one-row dicts).

    One stage (the default without GPUs): an actor pool whose actors featurize and score whole units, one CPU each
    (one per CPU by default), the cluster's GPUs shared among them.
    Two stages (the default with GPUs): Ray Data tasks featurize the units on every CPU, an actor pool (one actor
    per GPU, or ``workers`` CPU actors) scores them: graph building and the forward pass overlap, each on its own
    resources, and a GPU is no longer held up by its actor's one core building graphs. Either way a unit is whole
    from the first stage to its parts (a row of the dataset), so a unit is written once or not at all.
    """
    import ray

    cpus, gpus = int(ray.cluster_resources().get("CPU", 1)), int(ray.cluster_resources().get("GPU", 0))
    stages = stages or (2 if gpus else 1)
    pool = scoring_pool(stages, cpus, gpus, workers, len(pending))
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    ds.context.op_resource_reservation_enabled = False  # as in featurize: every CPU to the operators
    if stages == 2:
        ds = ds.map_batches(
            featurize_units,
            fn_kwargs={"config": featurize_config, "keys": output.keys.names},
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
        )
    # No actor restarts: Ray cannot restart actors whose constructor arguments live in the object store (Ray Data's
    # always do, ray-project/ray#53727) and warns about it on every screen; a lost actor fails the screen instead,
    # and a rerun scores only the units left. Ray Data takes the option through ``ray_remote_args``, removed in
    # Ray 2.64.
    no_restarts = {"max_restarts": 0} if ray_version() < (2, 64) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # max_restarts goes through "ray_remote_args"
        ds = ds.map_batches(
            ScreenActor,
            fn_constructor_kwargs={
                "model_dir": str(out / MODEL_DIR),
                "out": str(out),
                "batching": batching,
                "output": output,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus_each,
            num_gpus=pool.gpus_each,
            **no_restarts,
        )
    try:
        for row in ds.iter_rows():
            yield {"scored": [int(row["scored"])], "rejected": [int(row["rejected"])]}
    except ray.exceptions.RayError as err:
        raise ScreenError(
            f"scoring stopped ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the finished parts in "
            f"{out} are kept: run the same command again to score the rest"
        ) from err
