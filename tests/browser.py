"""A local HTML page as headless Chromium (Debian's ``chromium``, driven by Playwright) shows it:
console errors, requests that left the machine, images with their natural sizes, section ids
and the figures marked ``data-metric``; a full-page screenshot is kept when asked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("CXR_TEST_ARTIFACTS", "outputs/test-artifacts"))


def chromium() -> str:
    """The system Chromium; its absence fails the test, never skips it (``.ci/run`` installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium on this machine: apt-get install chromium (.ci/run does)")


def inspect_page(path: Path, screenshot: Path) -> dict:
    """Load ``path`` with every non-local request refused; return what the page showed."""
    from playwright.sync_api import sync_playwright

    errors, remote = [], []

    def route(request_route) -> None:
        url = request_route.request.url
        if url.startswith(("file:", "data:")):
            request_route.continue_()
        else:
            remote.append(url)
            request_route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route("**/*", route)
            page.goto(path.resolve().as_uri(), wait_until="load")
            shown = {
                "images": page.eval_on_selector_all(
                    "img", "els => els.map(e => ({id: e.id, complete: e.complete, width: e.naturalWidth, "
                           "height: e.naturalHeight}))"),
                "sections": page.eval_on_selector_all("section", "els => els.map(e => e.id)"),
                "metrics": dict(page.eval_on_selector_all(
                    "[data-metric]", "els => els.map(e => [e.dataset.metric, e.textContent.trim()])")),
                "title": page.title(),
            }
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return shown | {"errors": errors, "remote": remote}


def keep_on_failure(screenshot: Path, failed: bool) -> Path | None:
    """Copy the screenshot to ``$CXR_TEST_ARTIFACTS`` when the checks failed; returns the copy."""
    if not failed:
        return None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(screenshot, ARTIFACTS / screenshot.name))
