"""Settings, read once from the environment into frozen dataclasses.

The environment variable names are declared here, once; ``template.yaml`` sets the same names.
Every value has a safe default, so importing or running anything needs no configuration.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.layout import DATA_BUCKET, REGISTRY_URI

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# New images of a model that start its retraining (RETRAIN_MIN_NEW_IMAGES).
DEFAULT_MIN_NEW_IMAGES = 50

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Serving (PredictFunction)
ENV_MODEL_NAME = "MODEL_NAME"
ENV_MODEL_REGISTRY_URI = "MODEL_REGISTRY_URI"
ENV_MODEL_DIR = "MODEL_DIR"
ENV_MODEL_REFRESH_SECONDS = "MODEL_REFRESH_SECONDS"
ENV_MODEL_CACHE_SIZE = "MODEL_CACHE_SIZE"
ENV_NUM_THREADS = "NUM_THREADS"
ENV_MAX_BODY_BYTES = "MAX_BODY_BYTES"
ENV_MAX_IMAGE_PIXELS = "MAX_IMAGE_PIXELS"
ENV_MIN_IMAGE_SIDE = "MIN_IMAGE_SIDE"
ENV_MAX_DECODED_BYTES = "MAX_DECODED_BYTES"
ENV_MAX_JPEG_SCANS = "MAX_JPEG_SCANS"
ENV_MAX_IMAGE_CHUNKS = "MAX_IMAGE_CHUNKS"
ENV_MAX_BATCH_DECODED_BYTES = "MAX_BATCH_DECODED_BYTES"
ENV_MAX_BATCH = "MAX_BATCH"
ENV_DEFAULT_TOP_K = "DEFAULT_TOP_K"
ENV_URL_TIMEOUT_SECONDS = "URL_TIMEOUT_SECONDS"
ENV_URL_MAX_BYTES = "URL_MAX_BYTES"
ENV_URL_MAX_REDIRECTS = "URL_MAX_REDIRECTS"
ENV_PRIVATE_URL_ENDPOINTS = "PRIVATE_URL_ENDPOINTS"
# Uploads by presigned POST (large images for /predict, labelled images for retraining) and the
# scope of an admin JWT (the web console's writes). DATA_BUCKET (below) names the bucket.
ENV_UPLOAD_MAX_BYTES = "UPLOAD_MAX_BYTES"
ENV_UPLOAD_EXPIRES_SECONDS = "UPLOAD_EXPIRES_SECONDS"
ENV_ADMIN_SCOPE = "ADMIN_SCOPE"
# Captured traffic and feedback (imgclf.serving.capture, imgclf.feedback): the share of predict
# requests stored, the top-1 score under which an answer counts as low-confidence, and whether
# feedback goes to training without an admin's review.
ENV_CAPTURE_FRACTION = "CAPTURE_FRACTION"
ENV_LOW_CONFIDENCE_THRESHOLD = "LOW_CONFIDENCE_THRESHOLD"
ENV_FEEDBACK_AUTO_APPROVE = "FEEDBACK_AUTO_APPROVE"
# Powertools' own names (its Logger also reads LOG_LEVEL itself).
ENV_POWERTOOLS_SERVICE_NAME = "POWERTOOLS_SERVICE_NAME"
ENV_POWERTOOLS_METRICS_NAMESPACE = "POWERTOOLS_METRICS_NAMESPACE"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def _endpoints(env: Mapping[str, str], name: str) -> frozenset[tuple[IPAddress, int]]:
    """``address:port`` pairs, comma-separated (IPv6 in brackets: ``[::1]:3001``)."""
    endpoints = set()
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        host, sep, port = item.rpartition(":")
        try:
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("no port")
            address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
            if address.version == 6 and not host.startswith("["):
                raise ValueError("an IPv6 address goes in brackets")
            endpoints.add((address, int(port)))
        except ValueError as exc:
            raise ValueError(f"{name}: {item!r} is not address:port ({exc})") from exc
    return frozenset(endpoints)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    """A number from 0 to 1 (a share, a probability)."""
    value = _float(env, name, default)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r}: give a number from 0 to 1")
    return value


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied to every image before it is decoded, so that no input, however made, can
    take more than a bounded time and memory (``imgclf.preprocess`` checks them; README
    "Hostile input" gives the reasons for the defaults).

    Attributes:
        max_pixels: width x height, read from the header (animations: the canvas).
        min_side: the shortest side accepted.
        max_decoded_bytes: the bytes decoding one image makes, estimated from its header by
            format and mode: a PNG's inflated rows, a JPEG's coefficients (once more per ten
            scans), libwebp's canvases, the image and each full-size conversion. Memory and
            time both follow it (``imgclf.preprocess``).
        max_jpeg_scans: SOS markers in a JPEG: libjpeg walks every block once per scan.
        max_image_chunks: JPEG markers, PNG chunks, GIF blocks before the first frame: Pillow
            parses each one in Python.
        max_batch_decoded_bytes: the decoded bytes all the images of one request may add up
            to. A request's budget, not a property of an image: retraining has no batches and
            does not read it.
    """

    max_pixels: int = 40_000_000
    min_side: int = 16
    max_decoded_bytes: int = 320_000_000
    max_jpeg_scans: int = 100
    max_image_chunks: int = 10_000
    max_batch_decoded_bytes: int = field(default=320_000_000, compare=False)


@dataclass(frozen=True)
class ServeSettings:
    """Settings of the predict function.

    ``model_registry_uri`` empty means: serve the bundled model in ``model_dir`` (no registry).
    """

    # The default model: the pretrained classifier knows real photos out of the box.
    model_name: str = "imagenet"
    model_registry_uri: str = ""
    model_dir: Path = PROJECT_ROOT / "model"
    # A re-check is one conditional GET (304 when nothing moved): cheap enough to do often.
    model_refresh_seconds: float = 5.0
    model_cache_size: int = 2
    num_threads: int = 1
    # Lambda's synchronous payload limit is 6 MB for the whole event, base64 included.
    max_body_bytes: int = 4_500_000
    image_limits: ImageLimits = ImageLimits()
    max_batch: int = 8
    default_top_k: int = 3
    url_timeout_seconds: float = 5.0
    url_max_bytes: int = 4_500_000
    url_max_redirects: int = 3
    # Non-public address:port pairs a URL input may reach besides public addresses: exactly the
    # local stack's image server there, nothing in AWS (so never 169.254.169.254 and the like).
    private_url_endpoints: frozenset[tuple[IPAddress, int]] = frozenset()
    # Where presigned POSTs put files (uploads/, incoming/) and where jobs and rejections are read.
    data_bucket: str = DATA_BUCKET
    # The retrain function's threshold, so that /models and /jobs can say when a job will start.
    retrain_min_new_images: int = DEFAULT_MIN_NEW_IMAGES
    # A presigned POST's size cap: a phone photo is 3-12 MB; /predict reads it whole into memory.
    upload_max_bytes: int = 20_000_000
    # A presigned POST is good for this long: enough to start an upload, short if it leaks.
    upload_expires_seconds: int = 300
    # The scope an admin JWT carries (API Gateway's JWT authorizer checks it on write routes).
    admin_scope: str = "imgclf/admin"
    # The share of predict requests (batch items) whose image and answer are stored under
    # captures/ (sampled by request id). Images may be personal data: off unless asked for.
    capture_fraction: float = 0.0
    # An answer whose top-1 score is below this counts in the LowConfidence metric.
    low_confidence_threshold: float = 0.5
    # Feedback goes straight to incoming/ (training) without an admin's approval.
    feedback_auto_approve: bool = False
    service_name: str = "imgclf"
    metrics_namespace: str = "imgclf"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        """Reads the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            model_name=env.get(ENV_MODEL_NAME, "").strip() or d.model_name,
            model_registry_uri=env.get(ENV_MODEL_REGISTRY_URI, "").strip(),
            model_dir=Path(env.get(ENV_MODEL_DIR, "").strip() or d.model_dir),
            model_refresh_seconds=_float(env, ENV_MODEL_REFRESH_SECONDS, d.model_refresh_seconds),
            model_cache_size=_int(env, ENV_MODEL_CACHE_SIZE, d.model_cache_size),
            num_threads=_int(env, ENV_NUM_THREADS, d.num_threads),
            max_body_bytes=_int(env, ENV_MAX_BODY_BYTES, d.max_body_bytes),
            image_limits=ImageLimits(
                max_pixels=_int(env, ENV_MAX_IMAGE_PIXELS, d.image_limits.max_pixels),
                min_side=_int(env, ENV_MIN_IMAGE_SIDE, d.image_limits.min_side),
                max_decoded_bytes=_int(
                    env, ENV_MAX_DECODED_BYTES, d.image_limits.max_decoded_bytes
                ),
                max_jpeg_scans=_int(env, ENV_MAX_JPEG_SCANS, d.image_limits.max_jpeg_scans),
                max_image_chunks=_int(env, ENV_MAX_IMAGE_CHUNKS, d.image_limits.max_image_chunks),
                max_batch_decoded_bytes=_int(
                    env, ENV_MAX_BATCH_DECODED_BYTES, d.image_limits.max_batch_decoded_bytes
                ),
            ),
            max_batch=_int(env, ENV_MAX_BATCH, d.max_batch),
            default_top_k=_int(env, ENV_DEFAULT_TOP_K, d.default_top_k),
            url_timeout_seconds=_float(env, ENV_URL_TIMEOUT_SECONDS, d.url_timeout_seconds),
            url_max_bytes=_int(env, ENV_URL_MAX_BYTES, d.url_max_bytes),
            url_max_redirects=_int(env, ENV_URL_MAX_REDIRECTS, d.url_max_redirects),
            private_url_endpoints=_endpoints(env, ENV_PRIVATE_URL_ENDPOINTS),
            data_bucket=env.get(ENV_DATA_BUCKET, "").strip() or d.data_bucket,
            retrain_min_new_images=_int(env, ENV_RETRAIN_MIN_NEW_IMAGES, d.retrain_min_new_images),
            upload_max_bytes=_int(env, ENV_UPLOAD_MAX_BYTES, d.upload_max_bytes),
            upload_expires_seconds=_int(env, ENV_UPLOAD_EXPIRES_SECONDS, d.upload_expires_seconds),
            admin_scope=env.get(ENV_ADMIN_SCOPE, "").strip() or d.admin_scope,
            capture_fraction=_share(env, ENV_CAPTURE_FRACTION, d.capture_fraction),
            low_confidence_threshold=_share(
                env, ENV_LOW_CONFIDENCE_THRESHOLD, d.low_confidence_threshold
            ),
            feedback_auto_approve=_bool(env, ENV_FEEDBACK_AUTO_APPROVE, d.feedback_auto_approve),
            service_name=env.get(ENV_POWERTOOLS_SERVICE_NAME, "").strip() or d.service_name,
            metrics_namespace=env.get(ENV_POWERTOOLS_METRICS_NAMESPACE, "").strip()
            or d.metrics_namespace,
        )


# Retraining (RetrainFunction and the training job it launches)
ENV_DATA_BUCKET = "DATA_BUCKET"
ENV_RETRAIN_BACKEND = "RETRAIN_BACKEND"
ENV_RETRAIN_MIN_NEW_IMAGES = "RETRAIN_MIN_NEW_IMAGES"
ENV_RETRAIN_ALLOW_NEW_CLASSES = "RETRAIN_ALLOW_NEW_CLASSES"
ENV_RETRAIN_QUALITY_TOLERANCE = "RETRAIN_QUALITY_TOLERANCE"
ENV_RETRAIN_LOCK_TTL_SECONDS = "RETRAIN_LOCK_TTL_SECONDS"
ENV_RETRAIN_TRAIN_ARGS = "RETRAIN_TRAIN_ARGS"
ENV_RETRAIN_QUANTIZATION = "RETRAIN_QUANTIZATION"
ENV_RETRAIN_MAX_UPLOAD_BYTES = "RETRAIN_MAX_UPLOAD_BYTES"
ENV_SAGEMAKER_ROLE_ARN = "SAGEMAKER_ROLE_ARN"
ENV_SAGEMAKER_IMAGE_URI = "SAGEMAKER_IMAGE_URI"
ENV_SAGEMAKER_INSTANCE_TYPE = "SAGEMAKER_INSTANCE_TYPE"
RETRAIN_BACKENDS = ("local", "lambda", "sagemaker")


@dataclass(frozen=True)
class RetrainSettings:
    """Settings of the retrain function and of the training job (which reads the same names).

    ``backend``: ``local`` (a separate process on this machine, the local stack), ``lambda`` (in
    the retrain function, within its remaining time) or ``sagemaker`` (a SageMaker training job).
    ``train_args`` are extra ``train.py`` arguments (e.g. ``--quick`` or ``--epochs 5``).
    """

    # The defaults are the local stack's bucket names.
    data_bucket: str = DATA_BUCKET
    model_registry_uri: str = REGISTRY_URI
    backend: str = "local"
    min_new_images: int = DEFAULT_MIN_NEW_IMAGES
    allow_new_classes: bool = False
    # Largest drop in accuracy or macro F1 (vs the live model, same test split) still promoted.
    quality_tolerance: float = 0.01
    # The job renews its lock every third of this; a crashed job blocks others this long at most.
    lock_ttl_seconds: float = 900.0
    train_args: tuple[str, ...] = ()
    # int8 when the parity gate holds, float16 otherwise (imgclf.pipeline.conversion).
    quantization: str = "auto"
    # An upload (image or .zip) larger than this is rejected unread.
    max_upload_bytes: int = 200_000_000
    image_limits: ImageLimits = ImageLimits()
    sagemaker_role_arn: str = ""
    sagemaker_image_uri: str = ""
    sagemaker_instance_type: str = "ml.m5.xlarge"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetrainSettings:
        """Reads the settings from ``env`` (default: ``os.environ``).

        Raises:
            ValueError: RETRAIN_BACKEND is not one of ``RETRAIN_BACKENDS``.
        """
        env = os.environ if env is None else env
        d = cls()
        backend = env.get(ENV_RETRAIN_BACKEND, "").strip() or d.backend
        if backend not in RETRAIN_BACKENDS:
            raise ValueError(f"{ENV_RETRAIN_BACKEND}={backend!r}; choose one of {RETRAIN_BACKENDS}")
        return cls(
            data_bucket=env.get(ENV_DATA_BUCKET, "").strip() or d.data_bucket,
            model_registry_uri=env.get(ENV_MODEL_REGISTRY_URI, "").strip() or d.model_registry_uri,
            backend=backend,
            min_new_images=_int(env, ENV_RETRAIN_MIN_NEW_IMAGES, d.min_new_images),
            allow_new_classes=_bool(env, ENV_RETRAIN_ALLOW_NEW_CLASSES, d.allow_new_classes),
            quality_tolerance=_float(env, ENV_RETRAIN_QUALITY_TOLERANCE, d.quality_tolerance),
            lock_ttl_seconds=_float(env, ENV_RETRAIN_LOCK_TTL_SECONDS, d.lock_ttl_seconds),
            train_args=tuple(shlex.split(env.get(ENV_RETRAIN_TRAIN_ARGS, ""))),
            quantization=env.get(ENV_RETRAIN_QUANTIZATION, "").strip() or d.quantization,
            max_upload_bytes=_int(env, ENV_RETRAIN_MAX_UPLOAD_BYTES, d.max_upload_bytes),
            image_limits=ImageLimits(
                max_pixels=_int(env, ENV_MAX_IMAGE_PIXELS, d.image_limits.max_pixels),
                min_side=_int(env, ENV_MIN_IMAGE_SIDE, d.image_limits.min_side),
                max_decoded_bytes=_int(
                    env, ENV_MAX_DECODED_BYTES, d.image_limits.max_decoded_bytes
                ),
                max_jpeg_scans=_int(env, ENV_MAX_JPEG_SCANS, d.image_limits.max_jpeg_scans),
                max_image_chunks=_int(env, ENV_MAX_IMAGE_CHUNKS, d.image_limits.max_image_chunks),
            ),
            sagemaker_role_arn=env.get(ENV_SAGEMAKER_ROLE_ARN, "").strip(),
            sagemaker_image_uri=env.get(ENV_SAGEMAKER_IMAGE_URI, "").strip(),
            sagemaker_instance_type=(
                env.get(ENV_SAGEMAKER_INSTANCE_TYPE, "").strip() or d.sagemaker_instance_type
            ),
        )
