"""``POST /predict``: what a request asks for, and the plain ``predict`` function that answers it.

A request carries one image (raw body, multipart field, ``{"url"}`` or ``{"image"}``) or a bounded
batch (``{"urls"}`` or ``{"images"}``, each item answered or failed on its own), plus ``top_k`` and
``model_version`` from the query string or the JSON body (the body wins).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.artifact import LoadedModel
from imgclf.errors import BadRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType
from imgclf.preprocess import ALLOWED_MEDIA_TYPES, load_image
from imgclf.serving.http import Request, decode_base64, json_body, multipart_file
from imgclf.settings import ImageLimits

MULTIPART_FIELDS = ("file", "image")
# Raw bodies: the image types, and the generic type many clients send for a file.
RAW_MEDIA_TYPES = ALLOWED_MEDIA_TYPES | {"application/octet-stream"}
_JSON_KEYS = frozenset({"url", "image", "urls", "images", "top_k", "model_version"})
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def predict(model: LoadedModel, image: bytes, top_k: int, limits: ImageLimits) -> dict[str, Any]:
    """Classifies one encoded image.

    Args:
        model: the model to answer with.
        image: the encoded image (any allowed format).
        top_k: how many classes to return (capped at the number of classes).
        limits: the decoding limits.

    Returns:
        ``{"predictions": [{"label", "score"}, ...], "timing_ms": {"decode", "inference"}}``,
        best first.

    Raises:
        UnsupportedMediaType: an image format outside the allow-list.
        UnprocessableImage: not a decodable image, too small, or over the pixel limit.
    """
    t0 = time.perf_counter()
    pixels = load_image(image, model.height, model.width, limits, model.framing)
    t1 = time.perf_counter()
    probs = model.predict(pixels)
    t2 = time.perf_counter()
    best = np.argsort(-probs, kind="stable")[:top_k]
    return {
        "predictions": [
            {"label": model.labels[i], "score": round(float(probs[i]), 6)} for i in best
        ],
        "timing_ms": {"decode": _ms(t1 - t0), "inference": _ms(t2 - t1)},
    }


@dataclass(frozen=True)
class ImageSource:
    """Where one image comes from: the body's bytes, a base64 string, or a URL."""

    kind: str  # "bytes" | "base64" | "url"
    value: Any

    def read(self, fetch: Callable[[str], bytes]) -> bytes:
        """Returns the encoded image.

        Args:
            fetch: downloads a URL (``UrlFetcher.fetch``).

        Returns:
            The image bytes.

        Raises:
            ServiceError: a malformed item or a failed download.
        """
        if self.kind == "bytes":
            return self.value
        if not isinstance(self.value, str):
            raise BadRequest(f"each {self.kind} item must be a string", code="invalid_parameter")
        if self.kind == "url":
            return fetch(self.value)
        # Data URLs (data:image/png;base64,...) are what browsers produce.
        text = self.value.split(",", 1)[1] if self.value.startswith("data:") else self.value
        return decode_base64(text, "the image")


@dataclass(frozen=True)
class PredictRequest:
    """What a ``POST /predict`` asks for.

    Attributes:
        sources: one per image.
        batch: whether the answer is a list of results (``urls`` / ``images``).
        top_k: the requested number of classes, or None for the default.
        model_version: a pinned published version, or None for the live model.
    """

    sources: tuple[ImageSource, ...]
    batch: bool
    top_k: int | None
    model_version: str | None


def _top_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("top_k must be a positive integer", code="invalid_parameter")
    return value


def _model_version(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # {"model_version": 7}
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise BadRequest(
            "model_version must be a published version such as 0007", code="invalid_parameter"
        )
    return value


def _json_sources(body: dict[str, Any], max_batch: int) -> tuple[tuple[ImageSource, ...], bool]:
    unknown = sorted(set(body) - _JSON_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}", code="invalid_parameter")
    kinds = [k for k in ("url", "image", "urls", "images") if k in body]
    if len(kinds) != 1:
        raise BadRequest("send exactly one of url, image, urls or images")
    kind = kinds[0]
    if kind in ("url", "image"):
        return (ImageSource("url" if kind == "url" else "base64", body[kind]),), False
    items = body[kind]
    if not isinstance(items, list) or not items:
        raise BadRequest(f"{kind} must be a non-empty list")
    if len(items) > max_batch:
        raise PayloadTooLarge(
            f"a batch holds at most {max_batch} items, got {len(items)}", code="batch_too_large"
        )
    return tuple(ImageSource("url" if kind == "urls" else "base64", i) for i in items), True


def parse_predict_request(request: Request, max_batch: int) -> PredictRequest:
    """Reads a ``POST /predict`` request, whatever its kind.

    Args:
        request: the HTTP request.
        max_batch: the most items a batch may hold.

    Returns:
        The parsed request.

    Raises:
        BadRequest: malformed JSON, multipart or parameters.
        PayloadTooLarge: a batch over ``max_batch``.
        UnsupportedMediaType: a Content-Type that is neither an image, multipart nor JSON.
    """
    top_k = _top_k(request.query.get("top_k"))
    version = _model_version(request.query.get("model_version"))
    media_type = request.media_type
    if media_type == "application/json":
        body = json_body(request)
        sources, batch = _json_sources(body, max_batch)
        top_k = _top_k(body["top_k"]) if "top_k" in body else top_k
        if "model_version" in body:
            version = _model_version(body["model_version"])
        return PredictRequest(sources, batch, top_k, version)
    if media_type == "multipart/form-data":
        return PredictRequest(
            (ImageSource("bytes", multipart_file(request, MULTIPART_FIELDS)),),
            False,
            top_k,
            version,
        )
    if media_type in RAW_MEDIA_TYPES:
        return PredictRequest((ImageSource("bytes", request.body),), False, top_k, version)
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'} is not accepted: send an image "
        f"({', '.join(sorted(ALLOWED_MEDIA_TYPES))}), multipart/form-data or application/json"
    )


def _read(source: ImageSource, fetch: Callable[[str], bytes]) -> tuple[bytes, dict[str, float]]:
    """Reads one source, timing the download of a URL."""
    t0 = time.perf_counter()
    image = source.read(fetch)
    return image, ({"fetch": _ms(time.perf_counter() - t0)} if source.kind == "url" else {})


def _read_or_error(
    source: ImageSource, fetch: Callable[[str], bytes]
) -> tuple[bytes, dict[str, float]] | ServiceError:
    try:
        return _read(source, fetch)
    except ServiceError as exc:
        return exc


def answer(
    request: PredictRequest,
    model: LoadedModel,
    fetch: Callable[[str], bytes],
    default_top_k: int,
    limits: ImageLimits,
) -> dict[str, Any]:
    """Answers a parsed request: one prediction, or one result (or error) per batch item.

    A batch's URLs are downloaded concurrently, so a batch takes about as long as its slowest
    URL (at most URL_TIMEOUT_SECONDS) rather than the sum; inference stays sequential.

    Args:
        request: the parsed request.
        model: the model to answer with.
        fetch: downloads a URL (``UrlFetcher.fetch``).
        default_top_k: ``top_k`` when the request has none.
        limits: the decoding limits.

    Returns:
        The JSON body; the caller adds ``timing_ms.total``.

    Raises:
        ServiceError: the single image could not be obtained or classified (a batch records
            each item's error in its result instead).
    """
    top_k = min(request.top_k or default_top_k, len(model.labels))
    if not request.batch:
        image, timing = _read(request.sources[0], fetch)
        result = predict(model, image, top_k, limits)
        timing.update(result["timing_ms"])
        return {"predictions": result["predictions"], "model": model.ref, "timing_ms": timing}
    with ThreadPoolExecutor(max_workers=len(request.sources)) as pool:
        reads = list(pool.map(lambda s: _read_or_error(s, fetch), request.sources))
    results: list[dict[str, Any]] = []
    for read in reads:
        try:
            if isinstance(read, ServiceError):
                raise read
            image, timing = read
            result = predict(model, image, top_k, limits)
            result["timing_ms"] = {**timing, **result["timing_ms"]}
            results.append(result)
        except ServiceError as exc:
            results.append({**exc.to_body(), "status": exc.status})
    return {"results": results, "model": model.ref, "timing_ms": {}}
