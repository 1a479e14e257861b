"""Feedback in the web console (Chromium, the shared local stack, which captures every answer):
an admin corrects an answer under the prediction, then approves it in the review list; without a
token the control does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from helpers import RunningStack

pytestmark = pytest.mark.slow
SLOW_MS = 30_000


def test_an_admin_corrects_an_answer_and_approves_it(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
    screenshots: Path,
) -> None:
    # Without a token there is no feedback control under an answer.
    open_console(page, local_stack)
    page.locator("#predict-model").select_option("scene")
    page.get_by_label("Image file").set_input_files(photos / "grace_hopper.jpg")
    result = page.get_by_role("figure")
    expect(result.get_by_role("meter")).to_have_count(3, timeout=SLOW_MS)
    expect(page.get_by_label("Wrong? The right label is")).to_be_hidden()
    # GIVEN an admin's answer of the scene model (on a freshly loaded page)
    page.goto("about:blank")
    open_console(page, local_stack, admin=True)
    page.locator("#predict-model").select_option("scene")
    page.get_by_label("Image file").set_input_files(photos / "grace_hopper.jpg")
    expect(page.get_by_label("Wrong? The right label is")).to_be_visible(timeout=SLOW_MS)
    meta = result.locator("#predict-meta")
    expect(meta).to_contain_text("Answer ")
    answer_id = re.search(r"Answer (\S+)\.$", meta.inner_text()).group(1)
    # WHEN the admin says the right label is "street"
    page.get_by_label("Wrong? The right label is").fill("street")
    page.get_by_role("button", name="Send the right label").click()
    # THEN it waits for review
    expect(page.locator("#predict-feedback-status")).to_have_text(
        "Thank you: “street” waits for an admin's review (Data and retraining)."
    )
    page.screenshot(path=screenshots / "feedback.png", full_page=True)
    # AND the review list shows it; approving it sends the image to training
    page.get_by_role("link", name="Data and retraining").click()
    review = page.get_by_role("table", name=re.compile("Corrected labels"))
    row = review.get_by_role("row").filter(has_text=answer_id)
    expect(row).to_contain_text("street", timeout=SLOW_MS)
    page.screenshot(path=screenshots / "feedback-review.png", full_page=True)
    row.get_by_role("button", name="Approve street").click()
    expect(review.get_by_role("row").filter(has_text=answer_id)).to_have_count(0)
    expect(page.get_by_role("alert").filter(has_text="feedback")).to_have_count(0)
