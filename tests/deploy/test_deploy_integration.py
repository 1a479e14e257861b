"""A deployed stack end to end: test.py's checks against the API URL the stack outputs.

Runs only when AWS_SAM_STACK_NAME names a deployed stack, with AWS credentials and the stack's
region in the environment::

    AWS_SAM_STACK_NAME=imgclf AWS_DEFAULT_REGION=us-east-1 \\
        .venv/bin/python -m pytest tests/test_deploy_integration.py

``make test-deployed`` does the same with the stack name and region from samconfig.toml.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
import requests

from helpers import ROOT

STACK = os.environ.get("AWS_SAM_STACK_NAME", "")
# A cold start downloads the model from S3 before it answers.
TIMEOUT = 30.0

pytestmark = [
    pytest.mark.aws,
    pytest.mark.skipif(not STACK, reason="AWS_SAM_STACK_NAME is not set: no deployed stack"),
]


@pytest.fixture(scope="module")
def client() -> ModuleType:
    """test.py, the command-line client (loaded by path: the stdlib's ``test`` has its name)."""
    spec = importlib.util.spec_from_file_location("imgclf_client", ROOT / "test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack() -> dict[str, dict[str, str]]:
    """The stack's outputs and parameters."""
    described = boto3.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]
    return {
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        "parameters": {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]},
    }


@pytest.fixture(scope="module")
def api_url(client: ModuleType, stack: dict[str, dict[str, str]]) -> str:
    """The API's base URL, as test.py finds it; skips a stack whose API needs signed requests."""
    auth = stack["parameters"].get("AuthType", "NONE")
    if auth != "NONE":
        pytest.skip(f"the stack's API needs AuthType={auth} credentials; these requests are plain")
    url = client.api_url_from_stack(STACK)
    assert url == stack["outputs"]["ApiUrl"]
    return url


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JPEG of events/predict_http_api_jpeg.json, as a file."""
    event = json.loads((ROOT / "events" / "predict_http_api_jpeg.json").read_text())
    path = tmp_path_factory.mktemp("deployed") / "photo.jpg"
    path.write_bytes(base64.b64decode(event["body"]))
    return path


def get(api_url: str, path: str) -> requests.Response:
    return requests.get(api_url.rstrip("/") + path, timeout=TIMEOUT)


def test_the_client_classifies_an_image_through_the_stack(api_url: str, photo: Path) -> None:
    command = [sys.executable, "test.py", "--stack", STACK, "--file", str(photo), "--top-k", "3"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    classes = get(api_url, "/model").json()["classes"]
    table = result.stdout.splitlines()[2:]
    assert len(table) == 3 and all(line.split()[1] in classes for line in table), result.stdout


def test_the_function_serves_the_registry_live_version(
    api_url: str, stack: dict[str, dict[str, str]]
) -> None:
    health = get(api_url, "/health")
    assert health.status_code == 200, health.text
    model = health.json()["model"]
    # "bundled" would mean the registry was not read; 503 means nothing was published.
    assert model["name"] == stack["outputs"]["ModelName"] and model["version"].isdigit()
    described = get(api_url, "/model").json()
    assert described["model"] == model
    assert described["runtime"]["name"] == "ai-edge-litert"


def test_predictions_follow_the_contract(client: ModuleType, api_url: str, photo: Path) -> None:
    answer = client.classify(api_url, file=photo, top_k=3, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-3
    classes = get(api_url, "/model").json()["classes"]
    assert {p["label"] for p in body["predictions"]} <= set(classes)
    assert body["timing_ms"]["total"] > 0


def test_bad_requests_get_the_contract_json_errors(api_url: str) -> None:
    not_an_image = requests.post(
        api_url.rstrip("/") + "/predict",
        data=b"this is not an image",
        headers={"content-type": "image/jpeg"},
        timeout=TIMEOUT,
    )
    # Any route or method the API does not serve still reaches the handler ($default route).
    unknown, wrong_method = get(api_url, "/no-such-route"), get(api_url, "/predict")
    for response, status in ((unknown, 404), (wrong_method, 405)):
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"code", "message"}
    assert 400 <= not_an_image.status_code < 500, not_an_image.text
    assert set(not_an_image.json()["error"]) == {"code", "message"}
