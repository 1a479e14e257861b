"""``POST /predict``: what a request asks for, and the plain ``predict`` function that answers it.

A request carries one image (raw body, multipart field, ``{"url"}``, ``{"image"}`` or
``{"s3_key"}``: an image uploaded by presigned POST, ``imgclf.serving.uploads``) or a bounded
batch (``{"urls"}`` or ``{"images"}``, each item answered or failed on its own), plus ``top_k`` and
``model_version`` from the query string or the JSON body (the body wins).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.artifact import LoadedModel
from imgclf.errors import BadRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType
from imgclf.preprocess import ALLOWED_MEDIA_TYPES, DecodeBudget, load_image
from imgclf.serving.http import Request, decode_base64, json_body, multipart_file
from imgclf.settings import ImageLimits

MULTIPART_FIELDS = ("file", "image")
# Raw bodies: the image types, and the generic type many clients send for a file.
RAW_MEDIA_TYPES = ALLOWED_MEDIA_TYPES | {"application/octet-stream"}
_JSON_KEYS = frozenset({"url", "image", "urls", "images", "s3_key", "top_k", "model_version"})
# ASCII only, by construction: re's \d and str.isdigit also match other scripts' digits.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_VERSION_INT = 10**64  # the longest name _VERSION takes
MAX_TOP_K = 9999  # above the number of classes, top_k returns them all
_TOP_K = re.compile(r"[0-9]{1,4}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def predict(
    model: LoadedModel,
    image: bytes,
    top_k: int,
    limits: ImageLimits,
    budget: DecodeBudget | None = None,
) -> dict[str, Any]:
    """Classifies one encoded image.

    Args:
        model: the model to answer with.
        image: the encoded image (any allowed format).
        top_k: how many classes to return (capped at the number of classes).
        limits: the decoding limits.
        budget: what the request may still decode (a batch's), spent by this image.

    Returns:
        ``{"predictions": [{"label", "score"}, ...], "ood": {"score", "unusual"} | None,
        "timing_ms": {"decode", "inference"}}``, predictions best first. ``ood.score`` (0..1) is
        the share of the model's held-out in-distribution images whose features were closer to
        its training data than this image's; ``unusual`` is ``score > artifact.OOD_THRESHOLD``
        (0.99). ``ood`` is None for a version without OOD statistics (``ood.npz``).

    Raises:
        UnsupportedMediaType: an image format outside the allow-list.
        UnprocessableImage: not a decodable image, too small, or over a limit.
        PayloadTooLarge: the image would take ``budget`` below zero.
    """
    t0 = time.perf_counter()
    pixels = load_image(image, model.height, model.width, limits, model.framing, budget)
    t1 = time.perf_counter()
    probs, ood = model.classify(pixels)
    t2 = time.perf_counter()
    best = np.argsort(-probs, kind="stable")[:top_k]
    return {
        "predictions": [
            {"label": model.labels[i], "score": round(float(probs[i]), 6)} for i in best
        ],
        "ood": ood,
        "timing_ms": {"decode": _ms(t1 - t0), "inference": _ms(t2 - t1)},
    }


@dataclass(frozen=True)
class ImageSource:
    """Where one image comes from: the body's bytes, a base64 string, a URL, or an upload's key
    in the data bucket (read with ``read_object``: ``DataBucket.read_upload``)."""

    kind: str  # "bytes" | "base64" | "url" | "s3_key"
    value: Any
    read_object: Callable[[Any], bytes] | None = field(default=None, compare=False, repr=False)

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
        if self.kind == "s3_key":
            if self.read_object is None:
                raise BadRequest("s3_key inputs are not available here", code="invalid_parameter")
            return self.read_object(self.value)
        text = self.value
        # Data URLs (data:image/png;base64,...) are what browsers produce; the scheme is
        # case-insensitive.
        if text[:5].lower() == "data:":
            _, comma, text = text.partition(",")
            if not comma:
                raise BadRequest(
                    "a data URL needs a comma before its data (data:image/png;base64,...)",
                    code="invalid_base64",
                )
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
    """``top_k`` from the query (text) or JSON (an integer or its digits), strictly.

    Only ASCII digits, at most four (``MAX_TOP_K``): ``str.isdigit`` accepts "²" and
    "٣", which ``int`` then refuses, and ``int`` refuses more than 4,300 digits.
    """
    if value is None:
        return None
    if isinstance(value, str) and _TOP_K.fullmatch(value):
        value = int(value)
    # bool is an int; a JSON integer is bounded by its value, not parsed again.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOP_K:
        raise BadRequest(
            f"top_k must be an integer from 1 to {MAX_TOP_K}", code="invalid_parameter"
        )
    return value


def parse_model_version(value: Any) -> str | None:
    """``model_version`` from the query or JSON: a published version's name, or its number."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_VERSION_INT:
        value = str(value)  # {"model_version": 7}; bounded first, as str() refuses 4,300 digits
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise BadRequest(
            "model_version must be a published version such as 0007", code="invalid_parameter"
        )
    return value


def _json_sources(
    body: dict[str, Any], max_batch: int, read_upload: Callable[[Any], bytes] | None = None
) -> tuple[tuple[ImageSource, ...], bool]:
    unknown = sorted(set(body) - _JSON_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}", code="invalid_parameter")
    kinds = [k for k in ("url", "image", "urls", "images", "s3_key") if k in body]
    if len(kinds) != 1:
        raise BadRequest("send exactly one of url, image, urls, images or s3_key")
    kind = kinds[0]
    if kind == "s3_key":
        return (ImageSource("s3_key", body[kind], read_upload),), False
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


def parse_predict_request(
    request: Request, max_batch: int, read_upload: Callable[[Any], bytes] | None = None
) -> PredictRequest:
    """Reads a ``POST /predict`` request, whatever its kind.

    Args:
        request: the HTTP request.
        max_batch: the most items a batch may hold.
        read_upload: reads an ``s3_key`` input (``DataBucket.read_upload``); None refuses them.

    Returns:
        The parsed request.

    Raises:
        BadRequest: malformed JSON, multipart or parameters.
        PayloadTooLarge: a batch over ``max_batch``.
        UnsupportedMediaType: a Content-Type that is neither an image, multipart nor JSON.
    """
    top_k = _top_k(request.query.get("top_k"))
    version = parse_model_version(request.query.get("model_version"))
    media_type = request.media_type
    if media_type == "application/json":
        body = json_body(request)
        sources, batch = _json_sources(body, max_batch, read_upload)
        top_k = _top_k(body["top_k"]) if "top_k" in body else top_k
        if "model_version" in body:
            version = parse_model_version(body["model_version"])
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
    """Reads one source, timing the download of a URL or an upload."""
    t0 = time.perf_counter()
    image = source.read(fetch)
    fetched = source.kind in ("url", "s3_key")
    return image, ({"fetch": _ms(time.perf_counter() - t0)} if fetched else {})


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
    keep: Callable[[int, bytes], None] | None = None,
) -> dict[str, Any]:
    """Answers a parsed request: one prediction, or one result (or error) per batch item.

    A batch's URLs are downloaded concurrently, so a batch takes about as long as its slowest
    URL (at most URL_TIMEOUT_SECONDS) rather than the sum; inference stays sequential. Its
    images together may make at most ``limits.max_batch_decoded_bytes`` decoded bytes: the
    items past that budget fail with 413 ``batch_decoded_too_large`` (decoding is what costs
    time).

    Args:
        request: the parsed request.
        model: the model to answer with.
        fetch: downloads a URL (``UrlFetcher.fetch``).
        default_top_k: ``top_k`` when the request has none.
        limits: the decoding limits.
        keep: called with ``(index, image bytes)`` for each image that was read (a capture
            keeps the ones it samples, ``imgclf.serving.capture``).

    Returns:
        The JSON body; the caller adds ``timing_ms.total``.

    Raises:
        ServiceError: the single image could not be obtained or classified (a batch records
            each item's error in its result instead).
    """
    top_k = min(request.top_k or default_top_k, len(model.labels))
    if not request.batch:
        image, timing = _read(request.sources[0], fetch)
        if keep is not None:
            keep(0, image)
        result = predict(model, image, top_k, limits)
        timing.update(result["timing_ms"])
        return {
            "predictions": result["predictions"],
            "ood": result["ood"],
            "model": model.ref,
            "timing_ms": timing,
        }
    with ThreadPoolExecutor(max_workers=len(request.sources)) as pool:
        reads = list(pool.map(lambda s: _read_or_error(s, fetch), request.sources))
    if keep is not None:
        for index, read in enumerate(reads):
            if not isinstance(read, ServiceError):
                keep(index, read[0])
    results: list[dict[str, Any]] = []
    # Each image is bounded on its own; together they bound the request's time.
    budget = DecodeBudget(limits.max_batch_decoded_bytes)
    lite = model.interpreter
    if not lite.batch_invoke_sizes:
        # No batch size runs faster as one invoke (imgclf.runtime.BATCH_INVOKE_SIZES, measured by
        # make bench): each image is decoded and classified in turn.
        for read in reads:
            try:
                if isinstance(read, ServiceError):
                    raise read
                image, timing = read
                result = predict(model, image, top_k, limits, budget)
                result["timing_ms"] = {**timing, **result["timing_ms"]}
                results.append(result)
            except ServiceError as exc:
                results.append({**exc.to_body(), "status": exc.status})
        return {"results": results, "model": model.ref, "timing_ms": {}}
    # Some batch sizes run as one invoke: decode every image first, then ``predict_batch`` (one
    # invoke for a size in batch_invoke_sizes, one per image otherwise); each item's inference
    # time is its share of the batch's.
    decoded: list[tuple[int, np.ndarray, dict[str, float]]] = []
    for index, read in enumerate(reads):
        try:
            if isinstance(read, ServiceError):
                raise read
            image, timing = read
            t0 = time.perf_counter()
            pixels = load_image(image, model.height, model.width, limits, model.framing, budget)
            decoded.append((index, pixels, {**timing, "decode": _ms(time.perf_counter() - t0)}))
            results.append({})
        except ServiceError as exc:
            results.append({**exc.to_body(), "status": exc.status})
    if decoded:
        t0 = time.perf_counter()
        probs, features = lite.classify_batch(np.stack([pixels for _, pixels, _ in decoded]))
        ood = [None] * len(decoded)
        if model.ood is not None and features is not None:
            ood = [model.ood.assess(row) for row in features]
        inference = _ms((time.perf_counter() - t0) / len(decoded))
        for (index, _, timing), row, item_ood in zip(decoded, probs, ood, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            results[index] = {
                "predictions": [
                    {"label": model.labels[i], "score": round(float(row[i]), 6)} for i in best
                ],
                "ood": item_ood,
                "timing_ms": {**timing, "inference": inference},
            }
    return {"results": results, "model": model.ref, "timing_ms": {}}
