"""Uploads that go straight to S3 by presigned POST, and what became of them.

A synchronous request carries at most MAX_BODY_BYTES (Lambda's 6 MB event, base64 included; API
Gateway answers a larger body with its own 413), so larger files skip the function: the client asks
for a presigned POST, sends the file to the data bucket itself, then names the key.

- ``POST /uploads`` -> ``uploads/<time>-<random>.<ext>``: an image to classify with
  ``POST /predict {"s3_key": ...}``. It follows the API's read access, like ``/predict`` itself;
  the bucket's lifecycle rule deletes these files after a day.
- ``POST /models/{name}/uploads`` (admins only) ->
  ``incoming/<model>/<label>/<time>-<random>-<sha256>.<ext>``: labelled images for retraining,
  which the retrain function ingests (``imgclf.retrain.ingest``); ``GET /uploads/status?key=``
  then says what became of each: ``pending``, ``stored`` (as
  ``train|test/<model>/<label>/<sha256>.<ext>``), ``rejected`` (with the reason its
  ``rejected/<id>.json`` record gives) or ``missing``.

Each POST policy pins the key, the content type and a size range, and expires after
UPLOAD_EXPIRES_SECONDS. The function signs with its own role, which may put objects under
``uploads/`` and ``incoming/`` only (template.yaml).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from imgclf import layout
from imgclf.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from imgclf.serving.auth import require_admin
from imgclf.serving.http import Request, json_body
from imgclf.settings import ServeSettings
from imgclf.storage import S3Store

# Large images waiting to be classified (the data bucket's lifecycle rule expires them).
UPLOADS_PREFIX = "uploads/"
SUFFIX_OF_MEDIA_TYPE = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}
_TIME = "%Y%m%dT%H%M%SZ"
_SUFFIX = "(?:jpg|png|webp|gif|bmp)"
UPLOAD_KEY = re.compile(rf"uploads/[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{16}}\.{_SUFFIX}")
_NAME = layout.NAME.pattern
INCOMING_KEY = re.compile(
    rf"incoming/(?P<model>{_NAME})/(?P<label>{_NAME})/"
    rf"(?P<time>[0-9]{{8}}T[0-9]{{6}}Z)-[0-9a-f]{{16}}-(?P<sha256>[0-9a-f]{{64}})\.{_SUFFIX}"
)
SHA256 = re.compile(r"[0-9a-f]{64}")
# Files one POST /models/{name}/uploads may ask for, and keys one status request may name.
MAX_FILES = 100
# How long before a key's own time a rejection record may be dated (clocks differ a little).
CLOCK_SLACK = timedelta(minutes=2)


def _key_time(now: datetime) -> str:
    return f"{now:{_TIME}}-{secrets.token_hex(8)}"


def _exists(client: Any, bucket: str, prefix: str) -> str | None:
    """The first key under ``prefix``, or None (a listing: no read access to the object)."""
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
    return found[0]["Key"] if found else None


@dataclass
class DataBucket:
    """The data bucket as serving sees it: presigned POSTs, uploads to read, records to read."""

    settings: ServeSettings
    _client: Any = None
    _store: Any = None

    @property
    def store(self) -> S3Store:
        """The bucket as an ``imgclf.storage`` store on the same client (feedback)."""
        if self._store is None:
            self._store = S3Store(self.bucket, client=self.client)
        return self._store

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (no cost at cold start)."""
        if self._client is None:
            # SigV4 (the only signature newer regions accept); boto3 honours AWS_ENDPOINT_URL.
            config = Config(signature_version="s3v4", retries={"mode": "standard"})
            self._client = boto3.client("s3", config=config)
        return self._client

    @property
    def bucket(self) -> str:
        return self.settings.data_bucket

    def presigned_post(self, key: str, content_type: Any, size: Any) -> dict[str, Any]:
        """A presigned POST for one file at ``key``.

        Args:
            key: where the file goes.
            content_type: the file's media type (one of the image types serving decodes).
            size: the file's size in bytes, as the client declares it.

        Returns:
            ``{"key", "url", "fields", "max_bytes", "expires_in"}``: POST ``fields`` and then the
            file (as the form's last field, ``file``) to ``url``.

        Raises:
            UnsupportedMediaType: not an image type serving takes.
            BadRequest: no usable size.
            PayloadTooLarge: larger than UPLOAD_MAX_BYTES.
        """
        limit = self.settings.upload_max_bytes
        if content_type not in SUFFIX_OF_MEDIA_TYPE:
            raise UnsupportedMediaType(
                f"content_type {content_type!r} is not accepted: send one of "
                f"{', '.join(sorted(SUFFIX_OF_MEDIA_TYPE))}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise BadRequest("size must be the file's size in bytes", code="invalid_parameter")
        if size > limit:
            raise PayloadTooLarge(f"the file is {size} bytes; an upload may have {limit} at most")
        post = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, limit]],
            ExpiresIn=self.settings.upload_expires_seconds,
        )
        return {
            "key": key,
            "url": post["url"],
            "fields": post["fields"],
            "max_bytes": limit,
            "expires_in": self.settings.upload_expires_seconds,
        }

    def read_upload(self, key: Any) -> bytes:
        """Reads an image uploaded by presigned POST (``{"s3_key": ...}`` of ``/predict``).

        Raises:
            BadRequest: not a key ``POST /uploads`` hands out.
            NotFound: nothing there (never uploaded, or expired).
            PayloadTooLarge: larger than UPLOAD_MAX_BYTES.
        """
        if not isinstance(key, str) or not UPLOAD_KEY.fullmatch(key):
            raise BadRequest(
                f"s3_key must be a key under {UPLOADS_PREFIX} as POST /uploads returns it",
                code="invalid_s3_key",
            )
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # S3 answers 403, not 404, for a missing key to a role that may not list uploads/
            # (template.yaml lists only the prefixes the status routes need).
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "AccessDenied"):
                raise NotFound(
                    f"nothing was uploaded at {key} (or it expired)", code="upload_not_found"
                ) from exc
            raise
        with found["Body"] as body:
            if found["ContentLength"] > self.settings.upload_max_bytes:
                raise PayloadTooLarge(
                    f"the upload is {found['ContentLength']} bytes; the limit is "
                    f"{self.settings.upload_max_bytes}"
                )
            return body.read()

    def stored_as(self, model: str, label: str, sha256: str) -> str | None:
        """Where the training data holds this content under ``model``/``label``, if it does."""
        for split in (layout.TRAIN, layout.TEST):
            key = _exists(self.client, self.bucket, f"{split}{model}/{label}/{sha256}.")
            if key is not None:
                return key
        return None

    def rejections(self, keys: set[str], since: datetime) -> dict[str, dict[str, Any]]:
        """The ``rejected/`` records of these upload keys written since ``since``, by key."""
        found: dict[str, dict[str, Any]] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=layout.REJECTED
        )
        for page in pages:
            for item in page.get("Contents", []):
                if item["LastModified"] < since:
                    continue
                data = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                record = json.loads(data)
                if record.get("key") in keys:
                    found.setdefault(record["key"], record)
        return found

    def status(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """What became of training uploads (see the module docstring).

        Raises:
            BadRequest: a key ``POST /models/{name}/uploads`` does not hand out.
        """
        parsed = {}
        for key in keys:
            match = INCOMING_KEY.fullmatch(key)
            if match is None:
                raise BadRequest(
                    f"{key!r} is not a key POST /models/{{name}}/uploads hands out",
                    code="invalid_parameter",
                )
            parsed[key] = match
        # In this order: ingestion stores (or records the rejection) before it removes the upload,
        # so an upload seen gone has its outcome in place already.
        waiting = {key for key in parsed if _exists(self.client, self.bucket, key) == key}
        oldest = min(datetime.strptime(m["time"], _TIME) for m in parsed.values())
        rejected = self.rejections(set(parsed), oldest.replace(tzinfo=UTC) - CLOCK_SLACK)
        answers = []
        for key, match in parsed.items():
            answer: dict[str, Any] = {"key": key}
            if key in rejected:
                record = rejected[key]
                answer.update(status="rejected", code=record.get("code"), reason=record["reason"])
            elif key in waiting:
                answer["status"] = "pending"
            else:
                stored = self.stored_as(match["model"], match["label"], match["sha256"])
                answer.update(status="stored" if stored else "missing", stored_as=stored)
            answers.append(answer)
        return answers


@dataclass(frozen=True)
class UploadService:
    """The routes of uploads by presigned POST."""

    settings: ServeSettings
    bucket: DataBucket

    def create_upload(self, request: Request) -> dict[str, Any]:
        """``POST /uploads`` ``{"content_type", "size"}``: a presigned POST for one image to
        classify, then ``POST /predict {"s3_key": key}``."""
        body = json_body(request)
        content_type = body.get("content_type")
        suffix = SUFFIX_OF_MEDIA_TYPE.get(content_type, "bin")
        key = f"{UPLOADS_PREFIX}{_key_time(datetime.now(UTC))}.{suffix}"
        return self.bucket.presigned_post(key, content_type, body.get("size"))

    def create_training_uploads(self, request: Request) -> dict[str, Any]:
        """``POST /models/{name}/uploads`` (admin) ``{"label", "files": [{"name", "content_type",
        "size", "sha256"}]}``: one presigned POST per file into ``incoming/<name>/<label>/``, or
        the reason a file cannot go; a file whose content the label already has is marked
        ``duplicate`` (uploading it again adds nothing)."""
        require_admin(request.authorizer, self.settings.admin_scope)
        model = request.path_params["name"]
        body = json_body(request)
        label, files = body.get("label"), body.get("files")
        for kind, name in (("model", model), ("label", label)):
            if not isinstance(name, str) or not layout.NAME.fullmatch(name):
                raise BadRequest(
                    f"the {kind} name must be lowercase letters, digits, '-' or '_' (at most 63, "
                    "starting with a letter or digit)",
                    code="invalid_parameter",
                )
        if not isinstance(files, list) or not files:
            raise BadRequest("files must be a non-empty list", code="invalid_parameter")
        if len(files) > MAX_FILES:
            raise PayloadTooLarge(f"at most {MAX_FILES} files at a time", code="batch_too_large")
        now = datetime.now(UTC)
        uploads = []
        for file in files:
            file = file if isinstance(file, dict) else {}
            item: dict[str, Any] = {"name": str(file.get("name", ""))[:200]}
            try:
                sha256 = file.get("sha256")
                if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
                    raise BadRequest(
                        "each file needs its sha256 (64 lowercase hex digits)",
                        code="invalid_parameter",
                    )
                content_type = file.get("content_type")
                suffix = SUFFIX_OF_MEDIA_TYPE.get(content_type, "bin")
                key = f"{layout.INCOMING}{model}/{label}/{_key_time(now)}-{sha256}.{suffix}"
                item.update(self.bucket.presigned_post(key, content_type, file.get("size")))
                item["duplicate"] = self.bucket.stored_as(model, label, sha256) is not None
            except (BadRequest, PayloadTooLarge, UnsupportedMediaType) as exc:
                item.update(exc.to_body(), status=exc.status)
            uploads.append(item)
        return {"model": model, "label": label, "uploads": uploads}

    def upload_status(self, request: Request) -> dict[str, Any]:
        """``GET /uploads/status?key=K[&key=K2...]``: what became of training uploads."""
        # Payload 2.0 joins a repeated parameter's values with commas (keys have none).
        keys = [k for k in request.query.get("key", "").split(",") if k]
        if not keys:
            raise BadRequest(
                "name at least one upload: ?key=incoming/...", code="invalid_parameter"
            )
        if len(keys) > MAX_FILES:
            raise PayloadTooLarge(f"at most {MAX_FILES} keys at a time", code="batch_too_large")
        return {"uploads": self.bucket.status(dict.fromkeys(keys))}
