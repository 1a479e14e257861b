"""The local event source: S3 notifications from an SQS queue, handed to a Lambda handler.

The data bucket sends ``s3:ObjectCreated:*`` notifications for ``incoming/`` to a queue; this
process receives them and invokes the retrain handler with each S3 event, as Lambda's S3 trigger
would. It is its own execution environment (its own process), apart from the gateway's workers, and
initialises as Lambda does, on the first event: an import error fails that invocation (and shows
in the log) instead of stopping the stack. A failed invocation is retried after a delay; the
queue's redrive policy moves an event that keeps failing to the failure queue, so nothing is
dropped silently.

Usage: python -m imgclf.local.bridge --queue-url URL [--handler retrain_handler.lambda_handler]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any
from urllib.parse import unquote_plus

import boto3

from imgclf.local.context import Handler, LambdaContext, die_with_parent, import_handler

RETRY_DELAY_SECONDS = 5
POLL_SECONDS = 1

# Not under "imgclf": Powertools' Logger in the handler owns that name (service imgclf).
log = logging.getLogger("bridge")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class Bridge:
    """Receives S3 events from a queue and invokes a handler with each one."""

    def __init__(
        self, queue_url: str, handler_path: str, function_name: str, timeout: float
    ) -> None:
        self.queue_url = queue_url
        self.handler_path = handler_path
        self.handler: Handler | None = None
        self.function_name = function_name
        self.timeout = timeout
        self.sqs = boto3.client("sqs")
        self.running = True

    def stop(self, signum: int = 0, frame: Any = None) -> None:
        """Asks the loop to end after the current invocation (a signal handler)."""
        self.running = False

    def run(self) -> None:
        """Polls the queue until ``stop`` is called."""
        while self.running:
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=POLL_SECONDS,
                # The message stays hidden while the handler runs, up to the function timeout.
                VisibilityTimeout=int(self.timeout) + 30,
            )
            for message in answer.get("Messages", []):
                self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        """Invokes the handler with one message's S3 event; deletes the message if it succeeds.

        Args:
            message: an SQS message whose body is an S3 event notification.
        """
        receipt = message["ReceiptHandle"]
        try:
            event = json.loads(message["Body"])
        except ValueError:
            event = None
        if not isinstance(event, dict) or "Records" not in event:
            # s3:TestEvent, sent when the notification is configured: Lambda never sees it.
            log.info("skipped a message that is not an S3 event: %.200s", message["Body"])
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
            return
        keys = [
            unquote_plus(r.get("s3", {}).get("object", {}).get("key", "")) for r in event["Records"]
        ]
        context = LambdaContext(self.function_name, self.timeout)
        log.info("START RequestId: %s keys=%s", context.aws_request_id, keys)
        started = time.perf_counter()
        try:
            if self.handler is None:
                self.handler = import_handler(self.handler_path)
                log.info("INIT %s: %.1f ms", self.handler_path, _ms_since(started))
            result = self.handler(event, context)
        except Exception:
            log.exception("handler failed on %s; retrying in %d s", keys, RETRY_DELAY_SECONDS)
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=RETRY_DELAY_SECONDS,
            )
            return
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        log.info(
            "REPORT RequestId: %s Duration: %.1f ms result=%s",
            context.aws_request_id,
            _ms_since(started),
            json.dumps(result, default=str)[:500],
        )


def main(argv: list[str] | None = None) -> int:
    """Runs the bridge until SIGINT or SIGTERM.

    Args:
        argv: command line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue-url", required=True, help="the queue S3 notifies")
    parser.add_argument(
        "--handler", default="retrain_handler.lambda_handler", help="module.function"
    )
    parser.add_argument("--function-name", default="RetrainFunction", help="name in the context")
    parser.add_argument("--timeout", type=float, default=900.0, help="function timeout, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="[bridge] %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    bridge = Bridge(args.queue_url, args.handler, args.function_name, args.timeout)
    signal.signal(signal.SIGTERM, bridge.stop)
    signal.signal(signal.SIGINT, bridge.stop)
    die_with_parent()
    log.info("ready: polling %s", args.queue_url)
    bridge.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
