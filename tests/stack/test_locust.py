"""A short headless Locust run of locustfile.py against the local stack: no request may fail."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, RunningStack

pytestmark = pytest.mark.slow


def test_a_short_headless_run_has_no_failures(
    local_stack: RunningStack, sample_data: Path, tmp_path: Path
) -> None:
    # GIVEN the locustfile, the stack and its image server (for the URL inputs)
    env = {**os.environ, "SAMPLE_DIR": str(sample_data), "STATIC_URL": local_stack.static_url}
    # WHEN 2 users run for 5 seconds, as `make load-test` runs it
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "locustfile.py",
            "--headless",
            "--only-summary",
            "--host",
            local_stack.api_url,
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "5s",
            "--csv",
            str(tmp_path / "locust"),
            "--html",
            str(tmp_path / "locust.html"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN it succeeds, writes its reports and prints the summary
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "locust.html").stat().st_size > 0
    with (tmp_path / "locust_stats.csv").open() as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 10
    assert int(total["Failure Count"]) == 0
    # Every kind of input was exercised (the weights make each one near-certain in 5 s).
    assert len(rows) >= 4, sorted(rows)
    assert "SUMMARY requests=" in done.stdout + done.stderr
