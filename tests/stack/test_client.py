"""test.py, the command-line client, against the local stack (as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from helpers import ROOT, RunningStack
from imgclf.settings import ServeSettings

DEFAULT = ServeSettings().model_name

pytestmark = pytest.mark.slow


def run_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``python test.py ARGS`` from the project root."""
    return subprocess.run(
        [sys.executable, "test.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def an_image(sample_data: Path) -> Path:
    return sorted((sample_data / "seg_pred").glob("*.jpg"))[0]


def shown_labels(stdout: str) -> list[str]:
    """The label column of the printed table."""
    # "  1  Egyptian cat  0.3769  ####": labels may have spaces; columns are two spaces apart.
    rows = [line.strip().split("  ") for line in stdout.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    return [row[1] for row in rows if len(row) > 2 and row[0].isdigit()]


def test_a_file_prints_the_top_k_table(local_stack: RunningStack, sample_data: Path) -> None:
    done = run_client("--url", local_stack.api_url, "--file", str(an_image(sample_data)))
    assert done.returncode == 0, done.stderr
    assert f"model {DEFAULT} v0001" in done.stdout
    labels = json.loads((ROOT / "model" / DEFAULT / "labels.json").read_text())
    shown = shown_labels(done.stdout)
    assert len(shown) == 3 and set(shown) <= set(labels)


def test_an_image_url_and_top_k(local_stack: RunningStack, sample_data: Path) -> None:
    url = f"{local_stack.static_url}/seg_pred/{an_image(sample_data).name}"
    done = run_client("--url", local_stack.api_url, "--image-url", url, "--top-k", "6")
    assert done.returncode == 0, done.stderr
    assert len(shown_labels(done.stdout)) == 6


def test_an_error_answer_exits_non_zero_with_the_reason(
    local_stack: RunningStack, tmp_path: Path
) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a picture")
    done = run_client("--url", local_stack.api_url, "--file", str(not_an_image))
    assert done.returncode == 1
    assert "HTTP 422" in done.stderr and done.stdout == ""


def test_no_answer_exits_non_zero(sample_data: Path) -> None:
    # Port 9 (discard) on loopback: nobody listens there.
    done = run_client("--url", "http://127.0.0.1:9", "--file", str(an_image(sample_data)))
    assert done.returncode == 1
    assert "no answer from http://127.0.0.1:9" in done.stderr


def test_the_url_comes_from_the_stack_outputs(local_stack: RunningStack, sample_data: Path) -> None:
    # GIVEN a CloudFormation stack (in the local AWS endpoint) whose ApiUrl output is the gateway
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": local_stack.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"ApiUrl": {"Value": f"{local_stack.api_url}/"}},
    }
    cloudformation = boto3.client(
        "cloudformation",
        endpoint_url=local_stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    cloudformation.create_stack(StackName="imgclf-client-test", TemplateBody=json.dumps(template))
    # WHEN the client is given the stack's name instead of a URL
    done = run_client(
        "--stack", "imgclf-client-test", "--file", str(an_image(sample_data)), env=env
    )
    # THEN it finds the API and classifies the image
    assert done.returncode == 0, done.stderr
    assert f"model {DEFAULT} v0001" in done.stdout


def test_stack_without_aws_settings_is_one_clear_line(tmp_path: Path) -> None:
    # GIVEN no region and no credentials anywhere (not even a config file)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not used")
    done = subprocess.run(
        [sys.executable, "test.py", "--stack", "imgclf", "--file", str(image)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN it says what to set, in one line, with no traceback
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "AWS_DEFAULT_REGION" in done.stderr and len(done.stderr.strip().splitlines()) == 1
