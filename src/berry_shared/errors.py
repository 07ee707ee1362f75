"""Errors a caller can see, in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import math
from typing import Any

import orjson


class BerryError(Exception):
    """An error that becomes an HTTP response; the message is safe to show to the caller."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)


class InvalidRequest(BerryError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(BerryError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(BerryError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class NotFound(BerryError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(BerryError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(BerryError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    """OpenAI's own answer for an exhausted quota, so SDK users recognise it."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"


class NoBackendAvailable(BerryError):
    """Every eligible backend is out (circuit open) or failed for this request."""

    status_code = 503
    error_type = "service_unavailable"
    code = "no_backend_available"


class UpstreamTimeout(BerryError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


# A client-supplied name is echoed in errors at most this long: a 100 KB "model" is not sent back.
ECHO_LIMIT = 200


def echoed(value: str) -> str:
    """A client-supplied value as it may appear in an error message: cut to ``ECHO_LIMIT``."""
    return value if len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "..."


def retry_after_header(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, rounded up (waiting less is refused), >= 1."""
    return max(1, math.ceil(seconds))


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_json(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(error_body(message, error_type, code, param))
