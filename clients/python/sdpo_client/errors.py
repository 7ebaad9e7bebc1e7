"""Typed exceptions, built from the service's error envelope {"error": {code, message, field}}."""

from __future__ import annotations

from typing import Any

import httpx


class SdpoError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(SdpoError):
    """The service could not be reached, or the connection broke (after any retries)."""


class APITimeoutError(APIConnectionError):
    """A request timed out (after any retries)."""


class WaitTimeoutError(SdpoError, TimeoutError):
    """`wait(id, timeout=...)` ran out of time before the problem finished."""


class APIStatusError(SdpoError):
    """The service answered with an error status.

    `status_code` is the HTTP status; `code`, `message` and `field` come from the error
    envelope (`field` is the dotted path of the offending field, when there is one)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        field: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(
            f"{status_code} {code}: {message}" + (f" (field {field})" if field else "")
        )
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.response = response


class BadRequestError(APIStatusError):
    """400: the body is not JSON, or a malformed cursor or event id."""


class AuthenticationError(APIStatusError):
    """401: missing, invalid or revoked API key."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: unknown problem (or another tenant's), no adapter yet (`code == "no_adapter"`),
    or the best attempt was the base model's (`code == "base_model"`)."""


class ConflictError(APIStatusError):
    """409: cancel of a finished problem, or an Idempotency-Key reused with another body."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is over the service's limit."""


class ValidationError(APIStatusError):
    """422: a field is invalid or over a limit; `field` names it (e.g. `verifier.cases`)."""


class RateLimitError(APIStatusError):
    """429: too many queued + running problems; retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the service failed."""


class ServiceUnavailableError(ServerError):
    """503: the queue is full or storage is unreachable; retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (the service sends delta-seconds), else None."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error response (its body must have been read)."""
    status = response.status_code
    code, message, field = "error", response.reason_phrase or "error", None
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            field = err.get("field")
    except ValueError:
        if response.text.strip():
            message = response.text.strip()[:500]
    kw: dict[str, Any] = {"status_code": status, "code": code, "field": field, "response": response}
    if status == 429:
        return RateLimitError(message, retry_after=retry_after_seconds(response), **kw)
    if status == 503:
        return ServiceUnavailableError(message, retry_after=retry_after_seconds(response), **kw)
    if status >= 500:
        return ServerError(message, **kw)
    return _BY_STATUS.get(status, APIStatusError)(message, **kw)
