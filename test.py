"""Classifies one image with a running stack, local (``make run``) or deployed (``sam deploy``).

Usage:
    python test.py --url http://127.0.0.1:3000 --file data/sample/seg_pred/0.jpg
    python test.py --url URL --image-url http://127.0.0.1:3001/seg_pred/0.jpg
    python test.py --stack imgclf --file photo.jpg   # the API URL from the stack's ApiUrl output

Prints the top-k table; exits 1 when the API answers with an error (or cannot be reached). A file
over DIRECT_LIMIT_BYTES (what one request may carry) goes to S3 by presigned POST first
(``POST /uploads``), then is classified by reference (``{"s3_key": ...}``).
"""

from __future__ import annotations

import argparse
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import requests

STACK_OUTPUT_KEY = "ApiUrl"
# MAX_BODY_BYTES is 4,500,000: Lambda's 6 MB synchronous event with the body base64-encoded.
DIRECT_LIMIT_BYTES = 4_400_000
BAR_WIDTH = 30


def api_url_from_stack(stack_name: str, output_key: str = STACK_OUTPUT_KEY) -> str:
    """Reads the API's base URL from a CloudFormation stack's outputs.

    Args:
        stack_name: the deployed stack's name.
        output_key: the output that holds the URL.

    Returns:
        The URL.
    """
    # Imported here: only this option needs AWS (or the local endpoint in AWS_ENDPOINT_URL).
    from imgclf.cloudformation import StackNotReadable, stack_outputs

    try:
        outputs = stack_outputs(stack_name)
    except StackNotReadable as exc:
        raise SystemExit(f"error: {exc}") from None
    if output_key not in outputs:
        raise SystemExit(f"stack {stack_name} has no output {output_key}")
    return outputs[output_key]


def classify(
    api_url: str,
    *,
    file: Path | None = None,
    image_url: str | None = None,
    top_k: int | None = None,
    timeout: float = 30.0,
) -> requests.Response:
    """Sends one image (the file's bytes, or a URL for the API to fetch) to ``POST /predict``.

    Args:
        api_url: the API's base URL.
        file: an image file to upload as the request body.
        image_url: an image URL for the API to download instead.
        top_k: how many classes to return (the API's default when None).
        timeout: seconds to wait for the answer.

    Returns:
        The HTTP response.
    """
    url = api_url.rstrip("/") + "/predict"
    params = {"top_k": top_k} if top_k else None
    if file is not None:
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.stat().st_size > DIRECT_LIMIT_BYTES:
            return classify_by_upload(api_url, file, content_type, top_k, timeout)
        return requests.post(
            url,
            data=file.read_bytes(),
            headers={"content-type": content_type},
            params=params,
            timeout=timeout,
        )
    return requests.post(url, json={"url": image_url}, params=params, timeout=timeout)


def classify_by_upload(
    api_url: str, file: Path, content_type: str, top_k: int | None, timeout: float
) -> requests.Response:
    """Sends a large file to S3 with a presigned POST, then classifies it by its key.

    Returns:
        The answer of ``POST /predict`` (or of the step that failed).
    """
    base = api_url.rstrip("/")
    size = file.stat().st_size
    asked = requests.post(
        f"{base}/uploads", json={"content_type": content_type, "size": size}, timeout=timeout
    )
    if not asked.ok:
        return asked
    post = asked.json()
    with file.open("rb") as data:
        # The policy's fields first, the file last (S3 ignores fields after the file).
        sent = requests.post(
            post["url"],
            data=post["fields"],
            files={"file": (file.name, data, content_type)},
            timeout=timeout,
        )
    if not sent.ok:
        return sent
    body: dict[str, Any] = {"s3_key": post["key"]}
    if top_k:
        body["top_k"] = top_k
    return requests.post(f"{base}/predict", json=body, timeout=timeout)


def format_answer(answer: dict[str, Any], round_trip_ms: float) -> str:
    """Renders a prediction answer as a table with score bars.

    Args:
        answer: the API's JSON answer.
        round_trip_ms: the time the client waited.

    Returns:
        The table.
    """
    model = answer.get("model", {})
    served_ms = answer.get("timing_ms", {}).get("total")
    served = f"{served_ms:.1f} ms in the function, " if isinstance(served_ms, int | float) else ""
    lines = [
        f"model {model.get('name', '?')} v{model.get('version', '?')}   "
        f"({served}{round_trip_ms:.1f} ms round trip)",
        f"{'#':>3}  {'label':<12}  {'score':>7}",
    ]
    for rank, prediction in enumerate(answer["predictions"], start=1):
        score = float(prediction["score"])
        bar = "#" * round(score * BAR_WIDTH)
        lines.append(f"{rank:>3}  {prediction['label']:<12}  {score:>7.4f}  {bar}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the client.

    Args:
        argv: command line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 for predictions, 1 for an error answer or no answer.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the API's base URL, e.g. http://127.0.0.1:3000")
    where.add_argument("--stack", help="a deployed CloudFormation stack (reads its ApiUrl output)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", type=Path, help="an image file to send")
    what.add_argument("--image-url", help="an image URL for the API to fetch")
    parser.add_argument("--top-k", type=int, help="number of classes to show")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    args = parser.parse_args(argv)
    if args.file is not None and not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    api_url = args.url or api_url_from_stack(args.stack)
    started = time.perf_counter()
    try:
        answer = classify(
            api_url,
            file=args.file,
            image_url=args.image_url,
            top_k=args.top_k,
            timeout=args.timeout,
        )
    except requests.RequestException as exc:
        print(f"error: no answer from {api_url}: {exc}", file=sys.stderr)
        return 1
    round_trip_ms = (time.perf_counter() - started) * 1000
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.ok and "predictions" in body:
        print(format_answer(body, round_trip_ms))
        return 0
    # The API's own errors are {"error": {"code", "message"}}; API Gateway's are {"message"}.
    error = body.get("error") or {"code": "-", "message": body.get("message", answer.text[:200])}
    print(f"error: HTTP {answer.status_code} {error['code']}: {error['message']}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
