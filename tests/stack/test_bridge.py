"""The local S3-event bridge against moto's SQS: invoke, delete, retry, keep what keeps failing."""

from __future__ import annotations

import importlib
import json
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from helpers import load_event, s3_put_event
from imgclf.local import bridge
from imgclf.local.stack import MAX_ATTEMPTS

HANDLER = textwrap.dedent(
    """
    CALLS = []

    def lambda_handler(event, context):
        CALLS.append((event, context.function_name, context.get_remaining_time_in_millis()))
        if event["Records"][0]["s3"]["object"]["key"].startswith("incoming/scene/bad"):
            raise RuntimeError("this upload always fails")
        return {"ok": True}
    """
)


@pytest.fixture
def queues(aws_env: str) -> tuple[str, str]:
    """A queue whose redrive policy is the stack's, and its failure queue."""
    sqs = boto3.client("sqs")
    name = f"bridge-{uuid.uuid4().hex[:8]}"
    failures = sqs.create_queue(QueueName=f"{name}-failures")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=failures, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
        "maxReceiveCount": MAX_ATTEMPTS,
    }
    queue = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": json.dumps(redrive)})
    return queue["QueueUrl"], failures


@pytest.fixture
def handler_calls(
    queues: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], list[Any]]]:
    """Runs a bridge on the queue in a thread; yields a function giving its handler's calls."""
    module = f"bridge_handler_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Retry at once: the delay between attempts is not what these tests are about.
    monkeypatch.setattr(bridge, "RETRY_DELAY_SECONDS", 0)
    running = bridge.Bridge(queues[0], f"{module}.lambda_handler", "RetrainFunction", timeout=60)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield lambda: importlib.import_module(module).CALLS
    running.stop()
    thread.join(timeout=10)


def messages_in(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def send(queue_url: str, body: dict[str, Any]) -> None:
    boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))


def test_an_s3_event_is_handed_to_the_handler_then_deleted(
    queues: tuple[str, str], handler_calls: Callable[[], list[Any]]
) -> None:
    calls = handler_calls
    event = s3_put_event("imgclf-data", "incoming/scene/forest/a.jpg", '"0123"', 10)
    send(queues[0], event)
    wait_until(lambda: len(calls()) == 1 and messages_in(queues[0]) == 0)
    received, function_name, remaining_ms = calls()[0]
    assert received == event
    assert function_name == "RetrainFunction" and 0 < remaining_ms <= 60_000


def test_a_test_event_is_dropped_without_invoking(
    queues: tuple[str, str], handler_calls: Callable[[], list[Any]]
) -> None:
    calls = handler_calls
    send(queues[0], load_event("s3_test_event"))
    wait_until(lambda: messages_in(queues[0]) == 0)
    assert calls() == []


def test_a_failing_event_is_tried_three_times_then_kept_in_the_failure_queue(
    queues: tuple[str, str], handler_calls: Callable[[], list[Any]]
) -> None:
    # GIVEN an upload the handler always fails on
    calls = handler_calls
    event = s3_put_event("imgclf-data", "incoming/scene/bad/b.jpg", '"4567"', 10)
    # WHEN its event arrives
    send(queues[0], event)
    # THEN it is tried MAX_ATTEMPTS times, then moved, intact, to the failure queue
    wait_until(lambda: messages_in(queues[1]) == 1)
    assert len(calls()) == MAX_ATTEMPTS
    kept = boto3.client("sqs").receive_message(QueueUrl=queues[1])["Messages"][0]
    assert json.loads(kept["Body"]) == event
    assert messages_in(queues[0]) == 0
