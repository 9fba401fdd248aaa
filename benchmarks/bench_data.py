"""The benchmarks' input: mp36k as shipped in ``data/mp36k/``, or any JSONL(.gz) of structures given with ``--data``."""

from __future__ import annotations

import argparse
import gzip
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MP36K = REPO / "data" / "mp36k" / "mp36k.jsonl.gz"
DEMO = REPO / "data" / "demo" / "mp_demo.jsonl.gz"


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a file")
    return path


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data PATH``: JSONL(.gz) rows in mp36k's layout; default the shipped 36,737 MP crystals."""
    parser.add_argument(
        "--data",
        type=_existing_file,
        default=str(MP36K),  # a string default goes through `type`: a missing file is an error before any work
        help="structures, JSONL(.gz) in mp36k's layout (id, lattice, species, frac_coords, labels); "
        "default: data/mp36k/mp36k.jsonl.gz (36,737 Materials Project crystals)",
    )


def first_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` non-empty lines of a JSONL(.gz) file, newline kept (as the pipeline sees them)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return list(islice((line for line in fh if line.strip()), n))
