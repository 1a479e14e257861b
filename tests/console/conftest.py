"""The browser tests' fixtures: the system Chromium for pytest-playwright, the console's address and
admin token, real photos, console-error checks and screenshots (``reports/console/``).

Playwright cannot download its own browser here, so it drives Debian's ``/usr/bin/chromium``
(``make browser`` installs it). Without it the tests are skipped, except under CI (``CI=true``),
where a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import ConsoleMessage, Page, expect

from helpers import ROOT, RunningStack

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Quiet and offline: no update checks, no sync, no first-run pages.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "reports" / "console"


@pytest.fixture(scope="session", autouse=True)
def chromium() -> Path:
    """The browser, or a skip (a failure under CI) that says how to get it."""
    if shutil.which(str(CHROMIUM)) is None:
        message = f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium, as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the browser tests: {message}")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser_type_launch_args(
    browser_type_launch_args: dict[str, Any], chromium: Path
) -> dict[str, Any]:
    """pytest-playwright's launch options: the system Chromium, not a downloaded one."""
    return {**browser_type_launch_args, "executable_path": str(chromium), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where each view's screenshot goes (git-ignored; CI can keep it as an artifact)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


def admin_token(stack: RunningStack) -> str:
    """The admin token the stack printed in its banner."""
    match = re.search(r"Admin token \(.*\n\s+(\S+)", stack.log())
    assert match, "the stack's banner has no admin token"
    return match.group(1)


@dataclass
class ConsoleErrors:
    """What the page logged as errors; HTTP error answers a test provokes can be allowed."""

    messages: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def allow(self, *statuses: int) -> None:
        """Allows Chromium's "Failed to load resource: ... status of N" lines for these."""
        self.allowed += [f"status of {status} " for status in statuses]

    def unexpected(self) -> list[str]:
        return [m for m in self.messages if not any(a in m for a in self.allowed)]


@pytest.fixture
def console_errors(page: Page) -> Iterator[ConsoleErrors]:
    """Fails the test if the page logs an error it did not expect (or throws)."""
    errors = ConsoleErrors()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.messages.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.messages.append(f"uncaught: {exc}"))
    yield errors
    assert errors.unexpected() == []


def photo(size: tuple[int, int] | None = None, quality: int = 92) -> bytes:
    """matplotlib's grace_hopper.jpg (a real photo), re-encoded; upscaled with sensor noise to
    ``size`` (what makes a phone photo weigh megabytes)."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as original:
        image = original.convert("RGB")
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
        noise = np.random.default_rng(0).normal(0, 6, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos(sample_data: Path) -> Path:
    """Real photos as files, in the folder the stack's image server serves (URL inputs)."""
    folder = sample_data / "console"
    folder.mkdir(exist_ok=True)
    (folder / "grace_hopper.jpg").write_bytes(photo())
    # Over the ~4.4 MB a request body may carry: it must go through S3.
    (folder / "grace_hopper_8mb.jpg").write_bytes(photo((3300, 3870), quality=98))
    (folder / "not-an-image.jpg").write_bytes(b"This is a text file with a .jpg name.\n" * 50)
    return folder


@pytest.fixture
def open_console() -> Callable[..., None]:
    """Opens the console of a stack at a view, optionally signed in with its admin token."""

    def open_(page: Page, stack: RunningStack, view: str = "predict", admin: bool = False) -> None:
        page.goto(f"{stack.api_url}/#{view}")
        # app.js marks the page ready once the model list is in and the view is shown.
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        if admin:
            page.get_by_text("Sign in as admin").click()
            page.get_by_label("Admin token").fill(admin_token(stack))
            page.get_by_role("button", name="Use this token").click()
            expect(page.get_by_text("An admin token is set for this tab.")).to_be_visible()

    return open_
