"""Headless Chromium (Debian's, driven by Playwright) for the web pages' tests: every host name
resolves to loopback, and a page reaches nothing but the test's server.  Screenshots go under
build/test-artifacts/ (not committed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import missing

CHROMIUM = "/usr/bin/chromium"


def artifacts(name: str) -> Path:
    """The folder for the screenshots of ``name``'s tests."""
    where = Path(os.environ.get("SIPZONE_ARTIFACTS", "build/test-artifacts")) / name
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK) or shutil.which("chromium") is None:
        missing("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            # every host name goes to loopback: the portals' names reach the test's server
            args=[
                "--no-sandbox",
                "--host-resolver-rules=MAP * 127.0.0.1",
                "--autoplay-policy=no-user-gesture-required",  # the voicemail player's test
            ],
        )
        yield browser
        browser.close()


def new_page(browser: Any, **options: Any) -> Any:
    page = browser.new_page(**options)
    # nothing leaves loopback (a brand's logo URL included)
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if httpx.URL(route.request.url).port == page_port(page)
            else route.abort()
        ),
    )
    return page


def page_port(page: Any) -> int | None:
    return getattr(page, "sipzone_port", None)
