"""A headless Chromium driven by Selenium, for the tests that check pages in a real browser.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs both). The driver binary is
given explicitly, so Selenium never tries to download one (the machine is offline).
"""

from __future__ import annotations

import contextlib
import shutil

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """Yield a Selenium WebDriver on headless Chromium that records the console (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The SEVERE console entries logged since the last call (each call drains the log)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
