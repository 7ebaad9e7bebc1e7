"""What every router answers with: the model as JSON, and the documented error responses."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from service.models import ErrorResponse


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """The model as JSON, skipping FastAPI's second validation of a returned model."""
    return Response(
        model.model_dump_json(), status_code=status, headers=headers, media_type="application/json"
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request (bad JSON, bad cursor or event id).",
        401: "Missing, invalid or revoked API key.",
        404: "No such problem (or suite) for this tenant.",
        409: "Conflict with the problem's state or an earlier request.",
        410: "The events after Last-Event-ID were trimmed; the message names the first left.",
        413: "Request body too large.",
        422: "Invalid field; `error.field` names it.",
        429: "Too many queued + running problems (or open streams) for this tenant.",
        503: "Queue full or storage unavailable; see Retry-After.",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}
