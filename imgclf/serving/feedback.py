"""Feedback routes: a corrected label for a captured answer, and an admin's review of it.

- ``POST /feedback {"request_id", "label"}`` (admin): records ``feedback/pending/<request id>.json``
  for an answer that was captured (``imgclf.serving.capture``); the label must be a class of the
  model's live version. Unknown (never captured, or expired) request ids are 404, a label that is
  not a name or not a class 400, a second feedback for the same answer 409. With
  FEEDBACK_AUTO_APPROVE it is approved at once.
- ``GET /feedback?status=pending|approved|rejected[&model=M][&limit=N]`` (admin): the records.
- ``POST /feedback/{request_id}/approve`` (admin): the captured image goes to
  ``incoming/<model>/<label>/feedback-<sha256>.<ext>`` and through ingestion to training.
- ``POST /feedback/{request_id}/reject {"reason"?}`` (admin): it never reaches training.

The records and their moves are ``imgclf.feedback``'s; this module checks the caller, the input
and the model, maps the outcomes to HTTP, and counts them (``Feedback``, ``FeedbackApproved``,
``FeedbackRejected``, per model and version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from imgclf import feedback, layout
from imgclf.captures import REQUEST_ID, Capture, find_capture
from imgclf.errors import BadRequest, NotFound, ServiceError
from imgclf.feedback import Feedback
from imgclf.serving.auth import Conflict, require_admin
from imgclf.serving.capture import ModelMetrics
from imgclf.serving.http import Request, json_body
from imgclf.serving.model_holder import ModelCatalog
from imgclf.serving.uploads import DataBucket
from imgclf.settings import ServeSettings
from imgclf.storage import Store

MAX_LIST = 500
MAX_REASON = 500


def _http_error(exc: feedback.FeedbackError) -> ServiceError:
    """The API's error for a feedback outcome."""
    if isinstance(exc, feedback.NoCapture):
        return NotFound(str(exc), code=exc.code)
    if isinstance(exc, feedback.NotPending) and exc.decided is None:
        return NotFound(str(exc), code=exc.code)
    # A decided feedback, a second one, an image gone, a model that takes no uploads.
    return Conflict(str(exc), code=exc.code)


@dataclass(frozen=True)
class FeedbackService:
    """The feedback routes over the data bucket and the models being served."""

    settings: ServeSettings
    models: ModelCatalog
    bucket: DataBucket
    metrics: ModelMetrics

    @property
    def store(self) -> Store:
        return self.bucket.store

    def _count(self, record: Feedback, name: str) -> None:
        self.metrics.emit(
            {"name": record.model, "version": record.version}, {name: (MetricUnit.Count, [1])}
        )

    def _capture(self, request_id: str) -> Capture:
        """The captured answer of a request id.

        Raises:
            NotFound: it was not captured (or its capture expired).
        """
        try:
            capture = find_capture(self.store, request_id)
        except ClientError as exc:
            # A role that may not list captures/requests/ reads a missing key as a 403.
            if exc.response.get("Error", {}).get("Code") not in ("AccessDenied", "403"):
                raise
            capture = None
        if capture is None:
            raise NotFound(
                f"request {request_id} was not captured (CAPTURE_FRACTION samples answers, and "
                "captures expire): there is no image to give feedback on",
                code=feedback.NoCapture.code,
            )
        return capture

    def submit(self, request: Request) -> dict[str, Any]:
        """``POST /feedback {"request_id", "label"}`` (admin)."""
        claims = require_admin(request.authorizer, self.settings.admin_scope)
        body = json_body(request)
        unknown = sorted(set(body) - {"request_id", "label"})
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(unknown)}", code="invalid_parameter")
        request_id, label = body.get("request_id"), body.get("label")
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise BadRequest(
                "request_id must be the request_id of an answer", code="invalid_parameter"
            )
        if not isinstance(label, str) or not layout.NAME.fullmatch(label):
            raise BadRequest(
                "label must be a class name: lowercase letters, digits, '-' or '_'",
                code="invalid_label",
            )
        capture = self._capture(request_id)
        classes = self.models.get(capture.model).labels
        if label not in classes:
            raise BadRequest(
                f"{label!r} is not a class of model {capture.model}",
                code="invalid_label",
            )
        try:
            record = feedback.submit(self.store, capture, label, by=claims.get("sub"))
        except feedback.FeedbackError as exc:
            raise _http_error(exc) from exc
        self._count(record, "Feedback")
        answer: dict[str, Any] = {}
        if self.settings.feedback_auto_approve:
            try:
                record = feedback.approve(self.store, request_id, by="FEEDBACK_AUTO_APPROVE")
                self._count(record, "FeedbackApproved")
            except (feedback.NotTrainable, feedback.ImageGone) as exc:
                answer["note"] = f"kept pending: {exc}"
        return {"feedback": feedback.to_dict(record), **answer}

    def list(self, request: Request) -> dict[str, Any]:
        """``GET /feedback?status=pending[&model=M][&limit=N]`` (admin), oldest first."""
        require_admin(request.authorizer, self.settings.admin_scope)
        status = request.query.get("status") or feedback.PENDING
        if status not in feedback.STATUSES:
            raise BadRequest(
                f"status must be one of {', '.join(feedback.STATUSES)}", code="invalid_parameter"
            )
        model = request.query.get("model") or None
        if model is not None and not layout.NAME.fullmatch(model):
            raise BadRequest("model must be a model name", code="invalid_parameter")
        limit_text = request.query.get("limit") or "100"
        if not limit_text.isascii() or not limit_text.isdigit() or len(limit_text) > 4:
            raise BadRequest(f"limit must be 1 to {MAX_LIST}", code="invalid_parameter")
        limit = int(limit_text)
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(f"limit must be 1 to {MAX_LIST}", code="invalid_parameter")
        records = list(feedback.list_feedback(self.store, status, model, limit))
        records.sort(key=lambda r: r.time)
        return {"status": status, "feedback": [feedback.to_dict(r) for r in records]}

    def approve(self, request: Request) -> dict[str, Any]:
        """``POST /feedback/{request_id}/approve`` (admin)."""
        claims = require_admin(request.authorizer, self.settings.admin_scope)
        try:
            record = feedback.approve(
                self.store, request.path_params["request_id"], by=claims.get("sub")
            )
        except feedback.FeedbackError as exc:
            raise _http_error(exc) from exc
        self._count(record, "FeedbackApproved")
        return {"feedback": feedback.to_dict(record)}

    def reject(self, request: Request) -> dict[str, Any]:
        """``POST /feedback/{request_id}/reject [{"reason"}]`` (admin)."""
        claims = require_admin(request.authorizer, self.settings.admin_scope)
        reason = None
        if request.body:
            body = json_body(request)
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise BadRequest("reason must be text", code="invalid_parameter")
            reason = reason[:MAX_REASON] if reason else None
        try:
            record = feedback.reject(
                self.store, request.path_params["request_id"], by=claims.get("sub"), reason=reason
            )
        except feedback.FeedbackError as exc:
            raise _http_error(exc) from exc
        self._count(record, "FeedbackRejected")
        return {"feedback": feedback.to_dict(record)}
