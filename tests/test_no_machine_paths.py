"""No committed text names a path of one machine: every figure and command must work from a fresh clone."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

# Home and workspace folders of one machine. Spelled so that this file does not match itself.
MACHINE_PATH = re.compile(r"(?<![\w.])(?:/(?:work|root)/|/home/[a-z_][\w.-]*|/User[s]/|[A-Za-z]:\\\\?User[s]\\)")


def tracked_text_files() -> list[str]:
    """Files git tracks or would add (not ignored), skipping binary ones (a NUL byte in the first 8 KiB)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the committed tree cannot be listed")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = []
    for name in filter(None, listed.split("\0")):
        path = REPO / name
        if path.is_file():
            with path.open("rb") as fh:
                if b"\0" not in fh.read(8192):
                    files.append(name)
    return files


def test_pattern_finds_what_it_should() -> None:
    machine = ['Path("/work' + '/shared/x")', "sqlite:////home" + "/alice/.mtc", "/root" + "/data", "C:" + "\\Users\\b"]
    for text in machine:  # split literals: this file must not match itself
        assert MACHINE_PATH.search(text), text
    for text in ("tmp_path / 'work'", "https://example.org/work/x", "data/mp36k/mp36k.jsonl.gz", "~/.mtc"):
        assert not MACHINE_PATH.search(text), text


def test_no_absolute_path_of_a_machine_is_committed() -> None:
    found = []
    for name in tracked_text_files():
        text = (REPO / name).read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "absolute paths of one machine (use paths relative to the repository):\n" + "\n".join(found)
