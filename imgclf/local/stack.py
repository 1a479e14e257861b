"""The whole product on one machine, with one command: no AWS account, no Docker.

One process tree, stopped cleanly by Ctrl-C (SIGINT), SIGTERM or SIGHUP:

- this process: moto's S3 + SQS server on loopback (a thread), the data and model buckets, the
  registry seeded with the bundled model as version 0001 (alias ``live``), the data bucket's
  ``train/`` and ``test/`` seeded from the sample dataset, the S3 notification ``incoming/`` ->
  queue, and a static server for the sample images (URL inputs with no internet);
- ``imgclf.local.gateway``: gunicorn on 127.0.0.1:3000, one sync worker per Lambda execution
  environment, HTTP <-> payload-2.0 events for ``lambda_func.lambda_handler``, with API Gateway's
  JWT authorizer emulated: a signing key made at start (its JWKS in a temporary folder, removed at
  stop) and an admin token printed in the banner (``imgclf.local.auth``);
- ``imgclf.local.bridge``: receives the S3 events and invokes ``retrain_handler.lambda_handler``.

Every process reads its AWS settings from the standard variables (AWS_ENDPOINT_URL, region, dummy
credentials), so the code that runs here is the code that runs in AWS. State lives in memory and is
gone when the stack stops.

Usage: python -m imgclf.local [--port 3000] [--workers 2] [--s3-port 4566] [--static-port 3001]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from imgclf import layout
from imgclf.layout import DATA_BUCKET, INCOMING, MODEL_BUCKET, REGISTRY_URI
from imgclf.local.auth import AUDIENCE, ISSUER, TOKEN_SECONDS, SigningKey
from imgclf.local.context import REGION
from imgclf.local.gateway import SHUTDOWN_GRACE_SECONDS
from imgclf.local.static import StaticServer
from imgclf.registry import publish_bundled
from imgclf.retrain.ingest import seed_data
from imgclf.settings import ENV_CAPTURE_FRACTION, PROJECT_ROOT, RetrainSettings, ServeSettings
from imgclf.storage import open_store

QUEUE_NAME = "imgclf-retrain-events"
# template.yaml's RetrainFailureQueue: events the retrain function failed on, kept.
FAILURE_QUEUE_NAME = "imgclf-retrain-failures"
# Lambda's asynchronous invocations (S3 triggers) try an event three times in all
# (template.yaml: MaximumRetryAttempts 2), then send it to the failure queue.
MAX_ATTEMPTS = 3
# The standard variables boto3 reads. The credentials are moto's dummies: never real ones.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Variables that would point boto3 at a real account or profile instead of the local endpoint.
AWS_ACCOUNT_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")

log = logging.getLogger("stack")


class StackError(Exception):
    """The stack could not start; the message says why."""


@dataclass(frozen=True)
class StackConfig:
    """What the command line can change."""

    host: str = "127.0.0.1"
    port: int = 3000
    s3_port: int = 4566
    static_port: int = 3001
    workers: int = 2
    # template.yaml's PredictTimeout and RetrainFunction's Timeout.
    timeout: float = 29.0
    retrain_timeout: float = 900.0
    # The model POST /predict answers with; every folder of model_dir is published and served.
    model_name: str = ServeSettings().model_name
    model_dir: Path = PROJECT_ROOT / "model"
    # The model whose training data data_dir holds (seeded into train/<model>/, test/<model>/).
    data_model: str = "scene"
    # The sample dataset (Intel layout): seeds the data bucket and serves URL inputs.
    data_dir: Path = PROJECT_ROOT / "data" / "sample"
    # The reading routes' AuthType: none (open) or jwt (any valid token); writes always need an
    # admin token.
    auth: str = "none"

    @property
    def endpoint(self) -> str:
        """The local AWS endpoint (S3, SQS and the rest of moto)."""
        return f"http://{self.host}:{self.s3_port}"

    @property
    def api_url(self) -> str:
        """The local API gateway's base URL."""
        return f"http://{self.host}:{self.port}"


def function_environment(config: StackConfig) -> dict[str, str]:
    """The environment both functions get locally, as ``template.yaml`` sets it in AWS.

    Args:
        config: the stack's configuration.

    Returns:
        Variables to set on top of the caller's environment.
    """
    return {
        "AWS_ENDPOINT_URL": config.endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **DUMMY_CREDENTIALS,
        "MODEL_NAME": config.model_name,
        "MODEL_REGISTRY_URI": REGISTRY_URI,
        "DATA_BUCKET": DATA_BUCKET,
        "POWERTOOLS_SERVICE_NAME": "imgclf",
        "POWERTOOLS_METRICS_NAMESPACE": "imgclf",
        # URL inputs may reach the local image server, and no other non-public address.
        "PRIVATE_URL_ENDPOINTS": image_server_endpoints(config.host, config.static_port),
        # boto3 would send loopback requests through a proxy set in the environment.
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"])),
        "PYTHONUNBUFFERED": "1",
    }


def serve_environment() -> dict[str, str]:
    """What only the predict function gets locally, on top of ``function_environment``.

    Every answer is captured (``captures/``: the images of a local stack are its user's own, and
    feedback needs captures), unless the caller's environment sets CAPTURE_FRACTION;
    ``template.yaml``'s default is 0.
    """
    return {ENV_CAPTURE_FRACTION: os.environ.get(ENV_CAPTURE_FRACTION, "").strip() or "1.0"}


def image_server_endpoints(host: str, port: int) -> str:
    """PRIVATE_URL_ENDPOINTS for the image server: every address ``host`` names, at ``port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)
    return ",".join(f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}" for a in addresses)


def _queue_arn(sqs: Any, queue_url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


def create_resources() -> str:
    """Creates the buckets, the queues and the ``incoming/`` notification.

    Returns:
        The URL of the queue the data bucket notifies.
    """
    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    for bucket in (DATA_BUCKET, MODEL_BUCKET):
        s3.create_bucket(Bucket=bucket)
    failures_url = sqs.create_queue(QueueName=FAILURE_QUEUE_NAME)["QueueUrl"]
    redrive = {
        "deadLetterTargetArn": _queue_arn(sqs, failures_url),
        "maxReceiveCount": MAX_ATTEMPTS,
    }
    queue_url = sqs.create_queue(
        QueueName=QUEUE_NAME, Attributes={"RedrivePolicy": json.dumps(redrive)}
    )["QueueUrl"]
    s3.put_bucket_notification_configuration(
        Bucket=DATA_BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": _queue_arn(sqs, queue_url),
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": INCOMING}]}},
                }
            ]
        },
    )
    return queue_url


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _check_free(host: str, port: int, option: str, make_variable: str) -> None:
    # moto's server thread would hang on a taken port and gunicorn would retry for seconds.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            message = (
                f"{host}:{port} is taken ({exc.strerror}): free it, or choose another port "
                f"(make run {make_variable}=... or python -m imgclf.local {option} ...)"
            )
            raise StackError(message) from exc


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    # Straight to loopback, whatever HTTP_PROXY says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the gateway exited with code {process.returncode}")
        try:
            with opener.open(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise StackError(f"the gateway did not answer {url}/health within {timeout:.0f} s")


def _reap(process: subprocess.Popen[bytes], grace: float) -> None:
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop in %.0f s: killing its process group", process.pid, grace)
    # Each child leads its own process group: this also reaches gunicorn workers whose master died.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class LocalStack:
    """Starts and stops the moto server, the static server, the gateway and the bridge."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.moto: ThreadedMotoServer | None = None
        self.static: StaticServer | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.model_versions: dict[str, str] = {}
        self.seeded: dict[str, int] = {}
        self.state_dir: Path | None = None
        self.admin_token = ""
        self.admin_scope = ServeSettings.from_env().admin_scope

    def start(self) -> None:
        """Starts everything and returns when the gateway answers ``GET /health``."""
        config = self.config
        _check_free(config.host, config.s3_port, "--s3-port", "S3_PORT")
        _check_free(config.host, config.port, "--port", "PORT")
        _check_free(config.host, config.static_port, "--static-port", "STATIC_PORT")
        self.moto = ThreadedMotoServer(ip_address=config.host, port=config.s3_port, verbose=False)
        self.moto.start()
        # Set in this process too: the registry code below and both children use boto3 defaults.
        for name in AWS_ACCOUNT_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(function_environment(config))
        started = time.perf_counter()
        queue_url = create_resources()
        self.model_versions = {
            name: version or "?"
            for name, version in publish_bundled(
                open_store(REGISTRY_URI), config.model_dir, "local stack: the bundled model"
            ).items()
        }
        log.info("registry: %s live (%s)", self.model_versions, _since(started))
        # The identity provider's part: a key, its JWKS for the gateway, one admin token.
        self.state_dir = Path(tempfile.mkdtemp(prefix="imgclf-local-"))
        key = SigningKey.generate()
        jwks = key.write_jwks(self.state_dir / "jwks.json")
        self.admin_token = key.token(scopes=[self.admin_scope])
        token_file = self.state_dir / "admin-token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.admin_token)
        # The workers' cold starts overlap with seeding the data bucket.
        self.processes["gateway"] = self._spawn(
            "imgclf.local.gateway",
            f"--bind={config.host}:{config.port}",
            f"--workers={config.workers}",
            f"--timeout={config.timeout}",
            f"--jwks={jwks}",
            f"--jwt-issuer={ISSUER}",
            f"--jwt-audience={AUDIENCE}",
            f"--admin-scope={self.admin_scope}",
            f"--auth={config.auth}",
            env=serve_environment(),
        )
        self.processes["bridge"] = self._spawn(
            "imgclf.local.bridge", f"--queue-url={queue_url}", f"--timeout={config.retrain_timeout}"
        )
        started = time.perf_counter()
        self.seeded = seed_data(layout.data_store(DATA_BUCKET), config.data_dir, config.data_model)
        log.info("data bucket: %s from %s (%s)", self.seeded, config.data_dir, _since(started))
        self.static = StaticServer(config.data_dir, config.host, config.static_port)
        self.static.start()
        _wait_until_healthy(config.api_url, self.processes["gateway"], timeout=120)

    def _spawn(
        self, module: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C reaches this process only, which then stops the children
        # in order; and a hang-up of the terminal does not make gunicorn reload.
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=PROJECT_ROOT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def wait(self) -> str:
        """Blocks until a child process exits (a signal interrupts it with KeyboardInterrupt).

        Returns:
            The name of the child that exited.
        """
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    return name
            time.sleep(0.5)

    def stop(self) -> None:
        """Stops the children (SIGTERM, then SIGKILL after a grace period), then the servers."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            _reap(process, grace=SHUTDOWN_GRACE_SECONDS + 5)
        if self.static is not None:
            self.static.stop()
        if self.moto is not None:
            self.moto.stop()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def banner(self) -> str:
        """The endpoint, the buckets and copy-paste examples."""
        c = self.config
        images = sorted((c.data_dir / "seg_pred").glob("*.jpg"))
        image = images[0] if images else Path("IMAGE.jpg")
        shown = image.relative_to(PROJECT_ROOT) if image.is_relative_to(PROJECT_ROOT) else image
        image_url = f"{self.static.url if self.static else ''}/seg_pred/{image.name}"
        python = Path(sys.executable)
        if python.is_relative_to(PROJECT_ROOT):
            python = python.relative_to(PROJECT_ROOT)
        # The upload example files a real forest picture under forest/, not any picture.
        forests = sorted((c.data_dir / "seg_test" / "forest").glob("*.jpg"))
        example = forests[0] if forests else image
        example = (
            example.relative_to(PROJECT_ROOT) if example.is_relative_to(PROJECT_ROOT) else example
        )
        key = f"{INCOMING}{c.data_model}/forest/my-photo.jpg"
        seeded = f"{self.seeded.get('train', 0)} train + {self.seeded.get('test', 0)} test images"
        min_new = RetrainSettings.from_env().min_new_images
        models = ", ".join(f"{name} v{v} live" for name, v in self.model_versions.items())
        upload = f"boto3.client('s3').upload_file('{example}', '{DATA_BUCKET}', '{key}')"
        reads = "open" if c.auth == "none" else "need a token"
        token_file = self.state_dir / "admin-token" if self.state_dir else Path("admin-token")
        fraction = serve_environment()[ENV_CAPTURE_FRACTION]
        captured = f"CAPTURE_FRACTION={fraction}: answers kept under {DATA_BUCKET}/captures/"
        return f"""
Local stack ready (state is in memory; Ctrl-C stops everything)
  Web console    {c.api_url}/   (reads {reads}; paste the admin token below to upload and promote)
  API            {c.api_url}   ({c.workers} execution environments, timeout {c.timeout:.0f} s)
  AWS endpoint   {c.endpoint}   (S3 + SQS, region {REGION}, credentials testing/testing)
  data bucket    {DATA_BUCKET}   {c.data_model}: {seeded}; uploads to {INCOMING}<model>/<class>/
  model bucket   {MODEL_BUCKET}   registry {REGISTRY_URI}: {models}; default {c.model_name}
  static images  {image_url.rsplit("/", 2)[0]}/   (serves {c.data_dir})
  captures       {captured}   (feedback: make feedback)

Predict (the default model {c.model_name}; any model at /models/<name>/predict):
  curl -F file=@docs/examples/cat.jpg {c.api_url}/predict
  curl -F file=@{shown} {c.api_url}/models/{c.data_model}/predict
  curl -H 'content-type: application/json' -d '{{"url": "{image_url}"}}' {c.api_url}/predict
  curl {c.api_url}/models
  {python} test.py --url {c.api_url} --file {shown}
Upload a labelled image (a job starts once {min_new} new images of a model are pending;
`make jobs` shows how many are, and when the next job starts):
  export AWS_ENDPOINT_URL={c.endpoint} AWS_DEFAULT_REGION={REGION}
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  aws s3 cp {example} s3://{DATA_BUCKET}/{key}
  {python} -c "import boto3; {upload}"
Admin token (scope {self.admin_scope}, valid {TOKEN_SECONDS // 3600} h; also in {token_file}):
  {self.admin_token}
  paste it into the console, or send it: -H "authorization: Bearer $(cat {token_file})"
"""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Runs the local stack in the foreground until Ctrl-C, SIGTERM or SIGHUP.

    Args:
        argv: command line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 after a requested stop, 1 if a part of the stack failed.
    """
    d = StackConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=d.host, help="loopback address to bind")
    parser.add_argument("--port", type=int, default=d.port, help="API gateway port")
    parser.add_argument("--s3-port", type=int, default=d.s3_port, help="moto S3/SQS port")
    parser.add_argument("--static-port", type=int, default=d.static_port, help="image server port")
    parser.add_argument(
        "--workers", type=int, default=d.workers, help="gateway workers = execution environments"
    )
    parser.add_argument("--timeout", type=float, default=d.timeout, help="predict timeout, s")
    parser.add_argument("--retrain-timeout", type=float, default=d.retrain_timeout)
    parser.add_argument("--model-name", default=d.model_name)
    parser.add_argument(
        "--model-dir", type=Path, default=d.model_dir, help="bundled models: one folder each"
    )
    parser.add_argument(
        "--data-model", default=d.data_model, help="the model whose data --data-dir holds"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="sample dataset: seeds train/ and test/, served for URL inputs",
    )
    parser.add_argument(
        "--auth",
        choices=("none", "jwt"),
        default=d.auth,
        help="reading routes: open, or a valid JWT (writes always need the admin token)",
    )
    args = parser.parse_args(argv)
    config = StackConfig(**vars(args))
    logging.basicConfig(level=logging.INFO, format="[stack] %(levelname)s %(message)s")
    # Only warnings from the libraries: moto's server would log every S3 and SQS request.
    for name in ("werkzeug", "botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # SIGINT too: a shell that starts the stack in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    stack = LocalStack(config)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        failed = stack.wait()
        log.error("%s exited with code %s: stopping", failed, stack.processes[failed].returncode)
        return 1
    except StackError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        log.info("stopped")


if __name__ == "__main__":
    raise SystemExit(main())
