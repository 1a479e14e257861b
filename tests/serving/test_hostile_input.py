"""Hostile input through the real handler (issue 17): the fuzz harness's corpus-free subset, the
robustness run's findings one by one, and the memory floor the full run measured.

The subset (``fuzz.cases``: hostile files at small sizes, batches, malformed requests, refused
URLs, seeded mutations) runs each case in a child forked from this warmed-up process, with CPU,
wall and address-space limits (``fuzz.runner``): a hang or a crash fails this test, not the suite.
The full run (``make fuzz``) adds the Pillow corpus and the 40 MP files; its committed report,
``docs/fuzz.json``, is checked against template.yaml here.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import lambda_func
from fuzz import cases, craft
from fuzz.report import template_memory_floor
from fuzz.runner import Limits, Runner
from helpers import CONTEXT, handle, load_event, with_body, with_json, with_query
from imgclf.serving.app import build_router
from imgclf.settings import PROJECT_ROOT, ServeSettings

HTTP = "predict_http_api_jpeg"


def invoke(event: dict[str, Any], router: Any = None) -> tuple[int, dict[str, Any]]:
    """Calls the handler (or a test's router); returns (status, JSON body)."""
    if router is None:
        response = lambda_func.lambda_handler(event, CONTEXT)
    else:
        response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket on 127.0.0.1 that the URL cases point at: it must see no connection."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield sock
    sock.close()


# ---- the harness's subset ----------------------------------------------------------------------
def test_the_corpus_free_subset_is_answered_as_expected(listener: socket.socket) -> None:
    # GIVEN every kind of case at small sizes, made by code (no download)
    limits = lambda_func.settings.image_limits
    subset = [
        *cases.hostile_cases(limits, full=False),
        *cases.batch_cases(limits, lambda_func.settings.max_batch, full=False),
        *cases.request_cases(),
        *cases.url_cases(listener.getsockname()[1]),
        *cases.small_mutations(seed=0),
    ]
    runner = Runner(
        handler=lambda_func.lambda_handler,
        log_stream=lambda_func.logger.registered_handler.setStream,
        limits=Limits(cpu_seconds=10, wall_seconds=30, memory_mb=2048),
        listener=listener,
    )
    runner.warm_up(cases.warm_up_cases())
    # WHEN each runs through the handler in a forked, limited child
    started = time.monotonic()
    results = list(runner.run_all(subset))
    # THEN every one is answered (no 5xx, crash, hang, out-of-memory), as expected when known,
    # and no URL reached the listener
    failures = [
        f"{r.name}: {r.outcome} {r.status} {r.code} (expected {r.expected}) {r.detail}"
        for r in results
        if not r.ok
    ]
    assert not failures, "\n".join(failures)
    assert runner.connections_seen() == 0
    assert len(results) > 200 and time.monotonic() - started < 60


# ---- the robustness run's findings ---------------------------------------------------------------
def test_many_empty_scans_are_refused_before_the_decoder_runs() -> None:
    # GIVEN the robustness run's 512 x 512 progressive JPEG with 100,000 scans (2.5 s of CPU)
    data = craft.progressive_jpeg(512, 512, 100_000)
    event = with_body(load_event(HTTP), data, "image/jpeg")
    # WHEN it is posted
    started = time.process_time()
    status, body = invoke(event)
    # THEN it is refused at once, naming the limit
    assert time.process_time() - started < 1.0
    assert status == 422 and body["error"]["code"] == "too_many_scans"
    assert "MAX_JPEG_SCANS" in body["error"]["message"]


@pytest.mark.parametrize(
    "data",
    [craft.webp_lossless_constant(6300, 6300), craft.webp_animated((6300, 6300), (16, 16))],
    ids=["lossless-34-bytes", "animated-canvas"],
)
def test_a_huge_webp_canvas_is_refused_before_it_is_allocated(data: bytes) -> None:
    status, body = invoke(with_body(load_event(HTTP), data, "image/webp"))
    assert status == 422 and body["error"]["code"] == "decoded_too_large"
    assert "MAX_DECODED_BYTES" in body["error"]["message"]


@pytest.mark.parametrize(
    "text",
    ["data:image/jpeg;base64", "data:", "DATA:image/png;base64"],
)
def test_a_data_url_without_a_comma_is_a_bad_request(text: str) -> None:
    status, body = invoke(with_json(load_event(HTTP), {"image": text}))
    assert status == 400 and body["error"]["code"] == "invalid_base64"


def test_a_data_url_scheme_is_case_insensitive() -> None:
    image = "DATA:image/jpeg;base64," + base64.b64encode(cases.small_jpeg()).decode()
    status, body = invoke(with_json(load_event(HTTP), {"image": image}))
    assert status == 200, body


@pytest.mark.parametrize("text", ["9" * 5000, "\u00b2", "\u0663", "\uff13", " 3", "+3", "10000"])
def test_odd_top_k_is_a_bad_request_by_query_and_by_json(text: str) -> None:
    image = cases.small_jpeg()
    by_query = with_query(with_body(load_event(HTTP), image, "image/jpeg"), top_k=text)
    b64 = base64.b64encode(image).decode()
    by_json = with_json(load_event(HTTP), {"image": b64, "top_k": text})
    for event in (by_query, by_json):
        status, body = invoke(event)
        assert status == 400 and body["error"]["code"] == "invalid_parameter", text


def test_a_4000_digit_json_top_k_or_model_version_is_a_bad_request() -> None:
    b64 = base64.b64encode(cases.small_jpeg()).decode()
    for field in ("top_k", "model_version"):
        raw = f'{{"image": "{b64}", "{field}": {"9" * 4000}}}'.encode()
        status, body = invoke(with_body(load_event(HTTP), raw, "application/json"))
        assert status == 400 and body["error"]["code"] == "invalid_parameter", field


def test_a_batch_stops_decoding_at_its_budget() -> None:
    # GIVEN a router whose batches may decode 3.5 images' worth of 1000 x 1000 RGB PNGs
    image = craft.png_flat(1000, 1000, 2)
    per_image = 1000 * 1000 * 4 + 1000 * 3001  # the image, and the inflated rows
    settings = ServeSettings.from_env({"MAX_BATCH_DECODED_BYTES": str(per_image * 7 // 2)})
    router = build_router(settings, lambda_func.logger, lambda_func.metrics)
    items = [base64.b64encode(image).decode()] * 5
    # WHEN five of them come in one request
    status, body = invoke(with_json(load_event(HTTP), {"images": items}), router)
    # THEN three are answered and the rest refused, naming the limit
    assert status == 200
    assert [r.get("status", 200) for r in body["results"]] == [200, 200, 200, 413, 413]
    error = body["results"][3]["error"]
    assert error["code"] == "batch_decoded_too_large"
    assert "MAX_BATCH_DECODED_BYTES" in error["message"]


# ---- the full run's report and the template -----------------------------------------------------
def test_the_templates_memory_floor_covers_the_fuzz_runs_peak() -> None:
    # GIVEN the committed full run (make fuzz -> docs/fuzz.json)
    report = json.loads((PROJECT_ROOT / "docs" / "fuzz.json").read_text())
    peak = report["peak_rss"]["overall"]
    # THEN it met every target, with the limits the code has today
    assert report["meta"]["scale"] == "full" and report["meta"]["corpus"]
    assert all(t["met"] for t in report["targets"]), report["targets"]
    limits = lambda_func.settings.image_limits
    assert report["meta"]["image_limits"] == {
        "max_pixels": limits.max_pixels,
        "min_side": limits.min_side,
        "max_decoded_bytes": limits.max_decoded_bytes,
        "max_jpeg_scans": limits.max_jpeg_scans,
        "max_image_chunks": limits.max_image_chunks,
        "max_batch_decoded_bytes": limits.max_batch_decoded_bytes,
    }
    # AND template.yaml's smallest PredictMemorySize is above its peak, which the template's
    # comment and the README's sizing row state, with the input's size
    template = (PROJECT_ROOT / "template.yaml").read_text()
    assert peak["peak_rss_mb"] < template_memory_floor()
    block = re.search(r"^  PredictMemorySize:\n((?:    .*\n)+)", template, re.M)
    stated = f"peak of {peak['peak_rss_mb']:.0f} MB"
    size = re.search(r"\d+x\d+", peak["name"])[0]
    assert block and stated in block[1] and size in block[1] and "docs/fuzz.md" in block[1]
    readme = (PROJECT_ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `PredictMemorySize`"))
    assert stated in row and size in row
