"""The one error envelope: {"error": {"code", "message", "field"}}, for every failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sdpo.service")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise to answer with the error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = headers


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {"code": code or _CODES.get(status, "error"), "message": message, "field": field}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "header" and parts[1].islower():
        # a header as HTTP spells it (idempotency-key -> Idempotency-Key), as our own errors do
        parts[1] = "-".join(w.capitalize() for w in parts[1].split("-"))
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    """Register handlers so every error, validation and 404 included, uses the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, code=exc.code, field=exc.field, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _loc_to_field(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request"))
        return error_response(422, message, field=field)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_req: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(
            503, "storage unavailable, retry shortly", headers={"Retry-After": "5"}
        )

    @app.exception_handler(RedisOutOfMemoryError)
    async def _redis_full(req: Request, exc: Exception) -> JSONResponse:
        # maxmemory with noeviction (docs/deploy.md): writes fail until finished problems
        # expire; reads still work
        log.warning("redis is full: %s", exc)
        retry = req.app.state.settings.retry_after_seconds
        return error_response(
            503,
            "storage is full (Redis reached its maxmemory), retry later",
            code="storage_full",
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error")
