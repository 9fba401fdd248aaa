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


def render(url: str, screenshot: Path, until: str, wait_ms: int = 15000, tries: int = 3) -> str:
    """The DOM of ``url`` once it holds ``until``; saves a PNG screenshot too.

    Each try lets the page's scripts run for ``wait_ms`` of virtual time, doubled on every retry: on a loaded
    2-core machine the server's artifact answer can come after the first budget is spent. The last DOM is
    returned either way, and the caller's assertion says what was missing.
    """
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        dom = _dump_dom(url, screenshot, wait_ms * 2**attempt)
        if until in dom:
            break
    return dom


def _dump_dom(url: str, screenshot: Path, wait_ms: int) -> str:
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
            timeout=90 + wait_ms / 1000,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
