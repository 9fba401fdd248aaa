"""A page as a real browser renders it: headless Chromium (Debian's ``chromium``), its DOM and a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"  # gitignored; CI keeps it
FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
]


def chromium() -> str:
    """The Chromium binary; skips only where it cannot be installed (not root). CI installs it (.ci/run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0:
        raise AssertionError("chromium is missing: apt-get install -y chromium (.ci/run does it)")
    pytest.skip("chromium is not installed and this user cannot install it (apt-get install -y chromium)")


def render(url: str, screenshot: Path, wait_ms: int = 15000) -> str:
    """The DOM of ``url`` after its scripts ran for ``wait_ms`` of virtual time; saves a PNG screenshot too."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={screenshot}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
