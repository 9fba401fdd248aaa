"""The benchmarks' input: mp36k as shipped in ``data/mp36k/``, or any JSONL(.gz) of structures given with ``--data``."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import threading
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


class RaySampler(threading.Thread):
    """Polls RSS of this process's descendants (gcs, raylet, workers) from /proc; keeps the peak sums.

    Reads /proc directly (Linux) so that it needs no psutil; on other systems it reports nothing.
    """

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period = period
        self.peak_all = self.peak_workers = 0
        self.available = Path("/proc/self/status").exists()
        self.stop_event = threading.Event()

    @staticmethod
    def _descendants(root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [root]
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        return found

    def run(self) -> None:
        while self.available and not self.stop_event.is_set():
            total = workers = 0
            for pid in self._descendants(os.getpid()):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
                rss = int(match.group(1)) * 1024 if match else 0
                total += rss
                if cmdline.startswith(b"ray::") or b"default_worker.py" in cmdline:
                    workers += rss
            self.peak_all = max(self.peak_all, total)
            self.peak_workers = max(self.peak_workers, workers)
            self.stop_event.wait(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
