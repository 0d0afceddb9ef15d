"""Debian's Chromium for the browser tests (Playwright cannot download a browser here)."""

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def skip_module_without_chromium() -> None:
    """Skip the calling test module when Chromium is missing, unless CI requires it."""
    if not CHROMIUM.exists() and os.environ.get("PORTAL_REQUIRE_BROWSER") != "1":
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests",
            allow_module_level=True,
        )
