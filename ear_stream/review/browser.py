"""Headless Debian Chromium through Selenium for the station's browser test and its screenshot.

Only the system's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver``): nothing is downloaded, Selenium Manager is never asked for a driver, and every
background network feature is off (the machine's network is closed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1000",
)


def missing_browser() -> str | None:
    """Why a browser cannot start here (None when it can): what a test's skip reason says."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            return f"{tool} not found: install Debian's {package} (make browser)"
    return None


def start_chromium(user_data: Path | None = None) -> Any:
    """A headless Chromium WebDriver with a fresh profile (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")  # type: ignore[assignment]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data or tempfile.mkdtemp(prefix='ear-review-chromium-')}")
    return webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
