"""The local stack as a user runs it: real processes, real HTTP, moto's S3 and SQS on loopback.

One stack (2 gateway workers) serves every test here but the shutdown test, which starts its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests

from helpers import ROOT, RunningStack, encode, scene_image, start_stack
from imgclf.retrain.ingest import split_of
from imgclf.settings import ServeSettings

pytestmark = pytest.mark.slow
# The default model, which POST /predict answers with.
DEFAULT = ServeSettings().model_name
BUNDLED = ROOT / "model" / DEFAULT


def labels() -> list[str]:
    """The bundled model's classes."""
    return json.loads((BUNDLED / "labels.json").read_text())


def sample_image(sample_data: Path, index: int = 0) -> Path:
    """One unlabelled sample image."""
    return sorted((sample_data / "seg_pred").glob("*.jpg"))[index]


def assert_predictions(answer: requests.Response) -> dict[str, Any]:
    """A 200 with top-k predictions from the bundled model, as version 0001 of the registry."""
    assert answer.status_code == 200, answer.text
    body = answer.json()
    predictions = body["predictions"]
    assert predictions and {p["label"] for p in predictions} <= set(labels())
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert body["model"] == {"name": DEFAULT, "version": "0001"}
    return body


def wait_for_line(stack: RunningStack, *parts: str, timeout: float = 120) -> str:
    """Waits until the stack's log has a line containing every one of ``parts``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in stack.log().splitlines():
            if all(part in line for part in parts):
                return line
        time.sleep(0.3)
    raise AssertionError(f"no line with {parts} in the log:\n{stack.log()[-3000:]}")


def aws_client(stack: RunningStack, service: str) -> Any:
    """A boto3 client for the stack's local endpoint."""
    return boto3.client(
        service,
        endpoint_url=stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_predict_raw_bytes(local_stack: RunningStack, sample_data: Path) -> None:
    image = sample_image(sample_data).read_bytes()
    answer = requests.post(
        f"{local_stack.api_url}/predict", data=image, headers={"content-type": "image/jpeg"}
    )
    assert_predictions(answer)


def test_predict_multipart_upload(local_stack: RunningStack, sample_data: Path) -> None:
    image = sample_image(sample_data)
    with image.open("rb") as file:
        answer = requests.post(
            f"{local_stack.api_url}/predict?top_k=5",
            files={"file": (image.name, file, "image/jpeg")},
        )
    assert len(assert_predictions(answer)["predictions"]) == 5


def test_predict_base64_json(local_stack: RunningStack, sample_data: Path) -> None:
    encoded = base64.b64encode(sample_image(sample_data).read_bytes()).decode()
    assert_predictions(requests.post(f"{local_stack.api_url}/predict", json={"image": encoded}))


def test_predict_url_from_the_local_image_server(
    local_stack: RunningStack, sample_data: Path
) -> None:
    url = f"{local_stack.static_url}/seg_pred/{sample_image(sample_data).name}"
    assert_predictions(requests.post(f"{local_stack.api_url}/predict", json={"url": url}))


def test_url_inputs_reach_the_image_server_and_no_other_internal_address(
    local_stack: RunningStack, sample_data: Path
) -> None:
    # The stack's own API and moto's S3 are on loopback too, beside the image server.
    for url in [
        f"{local_stack.api_url}/health",
        f"{local_stack.endpoint}/",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        # the image server's port on another loopback address
        f"{local_stack.static_url}/seg_pred/0.jpg".replace("127.0.0.1", "127.0.0.2"),
    ]:
        answer = requests.post(f"{local_stack.api_url}/predict", json={"url": url})
        assert answer.status_code == 400, url
        assert answer.json()["error"]["code"] == "url_not_allowed", url


def test_the_same_image_gets_the_same_answer_by_every_route(
    local_stack: RunningStack, sample_data: Path
) -> None:
    image = sample_image(sample_data, 1)
    data = image.read_bytes()
    api = f"{local_stack.api_url}/predict"
    answers = [
        requests.post(api, data=data, headers={"content-type": "image/jpeg"}),
        requests.post(api, files={"file": (image.name, data, "image/jpeg")}),
        requests.post(api, json={"image": base64.b64encode(data).decode()}),
        requests.post(api, json={"url": f"{local_stack.static_url}/seg_pred/{image.name}"}),
    ]
    predictions = [assert_predictions(a)["predictions"] for a in answers]
    assert all(p == predictions[0] for p in predictions)


def test_health_and_model_describe_the_seeded_version(local_stack: RunningStack) -> None:
    health = requests.get(f"{local_stack.api_url}/health")
    assert health.status_code == 200
    assert health.json()["model"] == {"name": DEFAULT, "version": "0001"}
    model = requests.get(f"{local_stack.api_url}/model").json()
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    assert model["model"] == {"name": DEFAULT, "version": "0001"}
    assert model["classes"] == labels()
    assert model["sha256"] == manifest["sha256"]


def test_client_errors_come_back_as_json_with_their_status(local_stack: RunningStack) -> None:
    not_an_image = requests.post(
        f"{local_stack.api_url}/predict", data=b"hello", headers={"content-type": "text/plain"}
    )
    assert not_an_image.status_code == 415
    assert not_an_image.json()["error"]["code"]
    unknown = requests.get(f"{local_stack.api_url}/nowhere")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


def test_a_burst_larger_than_the_workers_is_all_answered(
    local_stack: RunningStack, sample_data: Path
) -> None:
    # GIVEN 2 execution environments and 24 requests sent at once
    images = [p.read_bytes() for p in sorted((sample_data / "seg_pred").glob("*.jpg"))]

    def send(i: int) -> requests.Response:
        return requests.post(
            f"{local_stack.api_url}/predict",
            data=images[i % len(images)],
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(send, range(24)))
    # THEN every request is answered, none lost or refused: the rest wait for a free environment
    for answer in answers:
        assert_predictions(answer)
    assert len({a.headers["apigw-requestid"] for a in answers}) == 24


def test_an_upload_to_incoming_reaches_the_retrain_handler(local_stack: RunningStack) -> None:
    # GIVEN a new labelled image
    data = encode(scene_image("forest", seed=77))
    s3 = aws_client(local_stack, "s3")
    # WHEN it is uploaded to incoming/<model>/<class>/ with boto3
    key = "incoming/scene/forest/upload test.jpg"
    s3.put_object(Bucket="imgclf-data", Key=key, Body=data)
    # THEN the bridge invokes the retrain handler with the S3 event, and the handler returns
    start = wait_for_line(local_stack, "START RequestId: ", f"keys=['{key}']")
    request_id = start.split("START RequestId: ")[1].split()[0]
    wait_for_line(local_stack, f"REPORT RequestId: {request_id}")
    # AND the handler ingested the image under its content hash and emptied incoming/
    stored = f"{split_of(data)}scene/forest/{hashlib.sha256(data).hexdigest()}.jpg"
    assert s3.list_objects_v2(Bucket="imgclf-data", Prefix=stored)["KeyCount"] == 1
    assert s3.list_objects_v2(Bucket="imgclf-data", Prefix="incoming/")["KeyCount"] == 0


def test_uploads_outside_incoming_do_not_reach_the_retrain_handler(
    local_stack: RunningStack,
) -> None:
    s3 = aws_client(local_stack, "s3")
    s3.put_object(Bucket="imgclf-data", Key="elsewhere/forest/x.jpg", Body=b"x")
    sqs = aws_client(local_stack, "sqs")
    queue = sqs.get_queue_url(QueueName="imgclf-retrain-events")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert "elsewhere/forest/x.jpg" not in local_stack.log()


def test_ctrl_c_stops_every_process_of_the_stack(sample_data: Path, tmp_path: Path) -> None:
    # GIVEN a running stack: this process, gunicorn's master and workers, the bridge
    stack = start_stack(tmp_path / "stack.log", sample_data, workers=2)
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert len(children) >= 4
    # WHEN it gets Ctrl-C (SIGINT)
    code = stack.stop(signal.SIGINT)
    # THEN it exits cleanly and no process it started is left
    assert code == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.api_url}/health", timeout=2)


def test_a_killed_stack_leaves_no_process_or_port_and_starts_again(
    sample_data: Path, tmp_path: Path
) -> None:
    # GIVEN a running stack
    stack = start_stack(tmp_path / "stack.log", sample_data, workers=2)
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert len(children) >= 4
    # WHEN the stack's own process is killed outright (no chance to stop its children)
    stack.process.kill()
    stack.process.wait(10)
    # THEN every process it started is gone within seconds, and nothing listens on its ports
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.api_url}/health", timeout=2)
    # AND a new stack starts cleanly and answers
    again = start_stack(tmp_path / "again.log", sample_data, workers=1)
    try:
        assert requests.get(f"{again.api_url}/health", timeout=10).status_code == 200
    finally:
        assert again.stop() == 0


@pytest.mark.slow
def test_a_worker_killed_during_a_burst_costs_at_most_the_request_it_held(
    sample_data: Path, tmp_path: Path
) -> None:
    # GIVEN a stack with two execution environments, and a burst of requests from 4 clients
    stack = start_stack(tmp_path / "stack.log", sample_data, workers=2)
    try:
        master = next(
            p
            for p in psutil.Process(stack.process.pid).children()
            if "imgclf.local.gateway" in " ".join(p.cmdline())
        )
        workers = master.children()
        assert len(workers) == 2
        image = encode(scene_image("sea", seed=5))
        outcomes: list[int | str] = []

        def client(count: int) -> None:
            with requests.Session() as session:
                for _ in range(count):
                    try:
                        r = session.post(
                            f"{stack.api_url}/predict",
                            data=image,
                            headers={"content-type": "image/jpeg"},
                            timeout=30,
                        )
                        outcomes.append(r.status_code)
                    except requests.RequestException as exc:
                        outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=client, args=(60,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        # WHEN one execution environment is killed in the middle of it
        while len(outcomes) < 40:
            time.sleep(0.01)
        workers[0].kill()
        for thread in threads:
            thread.join()
        # THEN at most the one request that worker held failed, and the worker was replaced
        failed = [o for o in outcomes if o != 200]
        assert len(outcomes) == 240 and len(failed) <= 1, failed
        deadline = time.monotonic() + 30
        while len(master.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        replaced = master.children()
        assert len(replaced) == 2 and workers[0].pid not in {w.pid for w in replaced}
        after = requests.post(
            f"{stack.api_url}/predict", data=image, headers={"content-type": "image/jpeg"}
        )
        assert after.status_code == 200
    finally:
        stack.stop()
