"""The typed errors a client (or an uploader) can cause, each with its HTTP status and code.

One place, ``ServiceError.to_body``, turns them into the JSON error shape of the HTTP contract.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error with an HTTP status, a stable machine-readable code and a message."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """Returns the JSON error body of the HTTP contract."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class InvalidImage(ServiceError):
    """The bytes are not an image this service takes: what training skips and ingestion rejects."""

    status, code = 422, "invalid_image"


class UnsupportedMediaType(InvalidImage):
    status, code = 415, "unsupported_media_type"


class UnprocessableImage(InvalidImage):
    status, code = 422, "invalid_image"


class UpstreamError(ServiceError):
    status, code = 502, "upstream_error"


class ModelUnavailable(ServiceError):
    status, code = 503, "model_unavailable"


class UpstreamTimeout(ServiceError):
    status, code = 504, "upstream_timeout"
