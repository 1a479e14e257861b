"""The console's long flow in a real browser: labelled images in, a retrained version live, rolled
back.

A stack of its own that retrains after 4 new images with train.py's smallest budget (--quick).
As an admin, the page uploads four new forest pictures and a file that is not an image, each with
its own progress bar; then shows each file's ingest outcome, the job's progress to "live", the new
version in the models view, and the old one live again after a rollback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from helpers import RunningStack, encode, scene_image, start_stack

pytestmark = pytest.mark.slow
NEW_IMAGES = 4
# Ingestion, then a warm-started --quick training, conversion, evaluation and publication, on
# two cores that may be busy with other tests.
RETRAIN_MS = 600_000


@pytest.fixture(scope="module")
def retraining_stack(
    sample_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    env = {"RETRAIN_MIN_NEW_IMAGES": str(NEW_IMAGES), "RETRAIN_TRAIN_ARGS": "--quick"}
    stack = start_stack(
        tmp_path_factory.mktemp("retraining") / "stack.log", sample_data, workers=2, env=env
    )
    yield stack
    stack.stop()


@pytest.fixture
def labelled(tmp_path: Path) -> list[Path]:
    """Four forest pictures the data bucket does not have yet, and a file that is no image."""
    paths = []
    for seed in range(NEW_IMAGES):
        path = tmp_path / f"forest-{seed}.jpg"
        path.write_bytes(encode(scene_image("forest", seed=10_000 + seed)))
        paths.append(path)
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"meeting notes, not a photo\n" * 40)
    return [*paths, bad]


def test_uploads_retrain_a_version_that_goes_live_and_rolls_back(
    page: Page,
    console_errors: Any,
    open_console: Callable[..., None],
    retraining_stack: RunningStack,
    labelled: list[Path],
    screenshots: Path,
) -> None:
    # GIVEN an admin in the data view
    open_console(page, retraining_stack, view="data", admin=True)
    view = page.get_by_role("region", name="Data and retraining")
    view.get_by_label("Model").fill("scene")
    view.get_by_label("Label", exact=True).fill("forest")
    # WHEN they upload the labelled images
    view.get_by_label("Labelled images").set_input_files(labelled)
    view.get_by_role("button", name="Upload").click()
    # THEN each file is sent (its own progress bar full) and ingested, or rejected with a reason
    uploads = view.get_by_role("table", name="Uploads")
    for path in labelled[:NEW_IMAGES]:
        row = uploads.get_by_role("row", name=re.compile(re.escape(path.name)))
        expect(row.get_by_role("cell").last).to_have_text("accepted", timeout=60_000)
        expect(row.get_by_role("progressbar")).to_have_attribute("value", "1")
    bad = uploads.get_by_role("row", name=re.compile("notes.jpg"))
    expect(bad.get_by_role("cell").last).to_have_text(re.compile(r"^rejected: \S.+\.$"))
    # AND the job they started runs through its stages to a new live version
    job = view.get_by_role("listitem").filter(has_text="Job ").first
    # (the job's end first, whichever it is, so that a failed job fails the test at once)
    expect(job).to_contain_text(
        re.compile(r"live: version|failed:|not made live"), timeout=RETRAIN_MS
    )
    expect(job).to_contain_text("live: version 0002")
    expect(job.get_by_role("progressbar")).to_have_attribute("value", "6")
    page.screenshot(path=screenshots / "data-retrained.png", full_page=True)
    # AND the models view shows it live, with the version it replaced
    page.get_by_role("link", name="Models").click()
    models = page.get_by_role("region", name="Models")
    models.get_by_label("Model").select_option("scene")
    expect(models.get_by_role("status").filter(has_text="is live")).to_have_text(
        re.compile(r"^Version 0002 is live")
    )
    versions = models.get_by_role("table", name="Published versions")
    expect(versions.get_by_role("row")).to_have_count(3)
    expect(versions.get_by_role("row", name=re.compile("^0002"))).to_contain_text("job ")
    expect(models.get_by_role("heading", name="Version 0002 (live)")).to_be_visible()
    page.screenshot(path=screenshots / "models-retrained.png", full_page=True)
    # WHEN the admin rolls back, THEN the old version is live again
    models.get_by_role("button", name="Roll back to the previous version").click()
    expect(models.get_by_role("status").filter(has_text="is live")).to_have_text(
        re.compile(r"^Version 0001 is live")
    )
    expect(versions.get_by_role("row", name=re.compile("^0001"))).to_contain_text("live")
    expect(models.get_by_role("button", name="Make version 0002 live")).to_be_visible()
