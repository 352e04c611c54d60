"""A headless Chromium driven by Selenium, for the tests that check pages in a real browser.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs both). The driver itself is
:func:`equidiff.report.browser_check.chromium` (one copy, shared with the maintainers' command);
this module adds the pytest skip mark and the console helper.
"""

from __future__ import annotations

import shutil

import pytest

from equidiff.report.browser_check import chromium  # noqa: F401  (re-exported for the tests)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")


def console_errors(driver) -> list[str]:
    """The SEVERE console entries logged since the last call (each call drains the log)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
