"""The web console in a real browser (Chromium) against the local stack, as a person uses it.

Predict a real photo by upload and by URL, an 8 MB photo through the presigned-POST path, readable
errors for a bad file and a refused URL, the models view with its confusion matrix, writes refused
without a token, the keyboard and a phone-sized screen; with what the first load weighs. Each view
leaves a screenshot in reports/console/. The long flow (upload, retrain, roll back) is in
test_retraining.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Page, expect

from helpers import ROOT, RunningStack

# A cold worker loads a model; a large image decodes for a second or two on a busy machine.
SLOW_MS = 30_000


def test_a_photo_is_classified_by_upload_with_bars_and_the_version(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
    screenshots: Path,
) -> None:
    # GIVEN the console
    open_console(page, local_stack)
    # WHEN a photo is chosen
    page.get_by_label("Image file").set_input_files(photos / "grace_hopper.jpg")
    # THEN the top three classes show as labelled bars, with the model and version that answered
    result = page.get_by_role("figure")
    expect(result.get_by_role("meter")).to_have_count(3, timeout=SLOW_MS)
    expect(result).to_contain_text(re.compile(r"Model [a-z0-9_-]+, version 0001"))
    expect(result).to_contain_text(re.compile(r"\d+ ms in the function, \d+ ms in all"))
    expect(result.get_by_role("img")).to_be_visible()
    page.screenshot(path=screenshots / "predict.png", full_page=True)


def test_a_photo_is_classified_by_url(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
) -> None:
    open_console(page, local_stack)
    page.get_by_label("Classes shown").fill("5")
    page.get_by_label("Image URL").fill(f"{local_stack.static_url}/console/grace_hopper.jpg")
    page.get_by_role("button", name="Classify the URL").click()
    result = page.get_by_role("figure")
    expect(result.get_by_role("meter")).to_have_count(5, timeout=SLOW_MS)
    expect(result).to_contain_text("version 0001")


def test_an_8_mb_photo_goes_through_storage_and_is_classified(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
) -> None:
    big = photos / "grace_hopper_8mb.jpg"
    assert 6_000_000 < big.stat().st_size < 12_000_000  # over the 4.4 MB a request carries
    open_console(page, local_stack)
    page.get_by_label("Image file").set_input_files(big)
    result = page.get_by_role("figure")
    expect(result).to_contain_text("sent through storage (large file)", timeout=SLOW_MS)
    expect(result.get_by_role("meter")).to_have_count(3)
    expect(result).to_contain_text("version 0001")


def test_a_bad_file_and_a_refused_url_read_as_sentences(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
) -> None:
    console_errors.allow(400, 415, 422)  # Chromium logs each 4xx answer; the page handles them
    open_console(page, local_stack)
    alert = page.get_by_role("alert").filter(has_text=re.compile("."))
    page.get_by_label("Image file").set_input_files(photos / "not-an-image.jpg")
    expect(alert).to_have_text(re.compile(r"^This (file is not an image|kind of file)"))
    page.get_by_label("Image URL").fill("file:///etc/passwd")
    page.get_by_role("button", name="Classify the URL").click()
    expect(alert).to_have_text(re.compile(r"^That is not an address the service can fetch"))
    # Plain sentences only: no JSON, no code, no stack trace.
    for text in alert.all_inner_texts():
        assert not re.search(r"[{}\[\]]|Traceback|Error:", text), text
    expect(page.get_by_role("figure")).to_be_hidden()


def test_the_models_view_shows_versions_metrics_and_the_confusion_matrix(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    screenshots: Path,
) -> None:
    open_console(page, local_stack, view="models")
    view = page.get_by_role("region", name="Models")
    view.get_by_label("Model").select_option("scene")
    expect(page.get_by_role("status").filter(has_text="is live")).to_have_text(
        re.compile(r"^Version 0001 is live")
    )
    versions = page.get_by_role("table", name="Published versions")
    expect(versions.get_by_role("row")).to_have_count(2)  # the header and 0001
    expect(versions.get_by_role("row").nth(1)).to_contain_text("live")
    expect(page.get_by_role("heading", name="Version 0001 (live)")).to_be_visible()
    classes = json.loads((ROOT / "model" / "scene" / "labels.json").read_text())
    per_class = page.get_by_role("table", name="Per class, on the test split")
    expect(per_class.get_by_role("row")).to_have_count(len(classes) + 1)
    matrix = page.get_by_role("table", name=re.compile("^Confusion matrix"))
    expect(matrix.get_by_role("cell")).to_have_count(len(classes) ** 2)
    # Only one version: nothing to roll back to.
    expect(page.get_by_role("button", name="Roll back to the previous version")).to_be_disabled()
    page.screenshot(path=screenshots / "models.png", full_page=True)


def test_writes_without_an_admin_token_are_refused(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    photos: Path,
    screenshots: Path,
) -> None:
    # Over HTTP, as any client: the gateway answers like API Gateway's JWT authorizer.
    api = local_stack.api_url
    for path, body in (
        ("/models/scene/promote", {"version": "0001"}),
        ("/models/scene/rollback", {}),
        ("/models/scene/uploads", {"label": "forest", "files": []}),
    ):
        anonymous = requests.post(f"{api}{path}", json=body, timeout=30)
        assert (anonymous.status_code, anonymous.json()) == (401, {"message": "Unauthorized"})
        forged = requests.post(
            f"{api}{path}", json=body, headers={"authorization": "Bearer x.y.z"}, timeout=30
        )
        assert forged.status_code == 401
    # In the page: an upload without a token says what is missing, and nothing is sent.
    console_errors.allow(401)
    open_console(page, local_stack, view="data")
    page.get_by_label("Label", exact=True).fill("forest")
    page.get_by_label("Labelled images").set_input_files(photos / "grace_hopper.jpg")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert").filter(has_text="admin")).to_have_text(
        "This needs an admin token: paste one under “Sign in as admin” at the top."
    )
    uploads = page.get_by_role("table", name="Uploads")
    expect(uploads.get_by_role("row").nth(1)).to_contain_text("not sent")
    page.screenshot(path=screenshots / "data.png", full_page=True)


def test_the_keyboard_reaches_every_view_and_a_phone_screen_fits(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    screenshots: Path,
) -> None:
    open_console(page, local_stack)
    for name, heading in (("Models", "Models"), ("Data and retraining", "Data and retraining")):
        page.get_by_role("link", name=name).focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("link", name=name)).to_have_attribute("aria-current", "page")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement !== document.body")  # focus moved on
    # A phone (390 x 844 CSS pixels): nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("link", name="Predict").click()
    expect(page.get_by_label("Take a photo")).to_have_attribute("capture", "environment")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, overflow
    page.screenshot(path=screenshots / "phone.png", full_page=True)


def test_what_the_first_load_weighs(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    local_stack: RunningStack,
    screenshots: Path,
) -> None:
    # Every request of a first visit (empty cache), as the browser counted its bytes.
    requests_seen = []
    page.on("requestfinished", lambda request: requests_seen.append(request))
    open_console(page, local_stack)
    page.wait_for_load_state("networkidle")
    rows = []
    for request in requests_seen:
        sizes = request.sizes()
        rows.append(
            {
                "url": request.url.removeprefix(local_stack.api_url),
                "body": sizes["responseBodySize"],
                "headers": sizes["responseHeadersSize"],
            }
        )
    total = sum(r["body"] + r["headers"] for r in rows)
    (screenshots / "first-load.json").write_text(json.dumps({"total": total, "requests": rows}))
    assert {r["url"] for r in rows} >= {"/", "/console/app.js", "/console/style.css", "/models"}
    assert all(r["url"].startswith("/") for r in rows), "a request left the API's origin"
    assert total < 80_000, total
