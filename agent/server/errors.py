"""HTTP status codes for Vigil's error hierarchy, and the one error body every error answers.

Every error answers :class:`ErrorBody`: ``{"error": CODE, "detail": [{"field": ..., "message":
...}, ...]}``. ``error`` is a short code from :data:`ErrorCode`; ``field`` is the dotted path of
the offending input (``alerts[0].fingerprint``, ``limit``, ``body`` for a body that is not JSON at
all), or ``null`` when no field is at fault, so that a caller can always tell which field to fix.
The OpenAPI document declares this body for every error status (:func:`error_responses`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from agent.ratelimit import RateLimited
from agent.server.pool import PoolFull
from tools.errors import (
    ApprovalError,
    ConfigError,
    NotFoundError,
    RetryableError,
    StateError,
    TelemetryError,
    VigilError,
)
from tools.redaction import hide_passwords

__all__ = [
    "ErrorBody",
    "ErrorCode",
    "ErrorItem",
    "RateLimited",
    "Unauthorized",
    "error_response",
    "error_responses",
    "field_path",
    "install_error_handlers",
    "validation_items",
]

_log = logging.getLogger(__name__)

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "too_large",
    "invalid",
    "rate_limited",
    "internal",
    "busy",
]
_CODES: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "busy",
}
RETRY_AFTER_S = 30


class ErrorItem(BaseModel):
    """One problem: which input field (dotted path, or null) and what is wrong with it."""

    model_config = ConfigDict(extra="forbid")

    field: str | None
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorCode
    detail: list[ErrorItem]


class Unauthorized(VigilError):
    """No valid bearer token (HTTP 401)."""


def field_path(loc: Sequence[Any]) -> str | None:
    """Dotted path of a validation error's location.

    ``("body", "alerts", 0, "fingerprint")`` becomes ``alerts[0].fingerprint``.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def validation_items(errors: Sequence[Any], prefix: str = "") -> list[ErrorItem]:
    """Pydantic / FastAPI validation errors as :class:`ErrorItem`, each naming its field.

    A body that is not JSON at all names the field ``body`` (never a character offset).

    Args:
        errors: ``exc.errors()`` of a pydantic ``ValidationError`` or ``RequestValidationError``.
        prefix: Path prepended to every field (``alerts[2]`` for one alert of a batch).
    """
    items = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if e.get("type") == "json_invalid" or loc == ("body",):
            field: str | None = "body"  # the body as a whole (never a character offset)
        else:
            field = field_path(loc)
            if prefix:
                joined = f"{prefix}{'' if field is None or field.startswith('[') else '.'}"
                field = joined + (field or "") if field else prefix
        items.append(ErrorItem(field=field, message=str(e.get("msg", ""))))
    return items


def error_response(
    status: int, items: list[ErrorItem], headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer with :class:`ErrorBody`."""
    code = _CODES.get(status, "bad_request" if status < 500 else "internal")
    # A store's URL may be quoted by an error's message: never its password.
    items = [i.model_copy(update={"message": hide_passwords(i.message)}) for i in items]
    body = ErrorBody(error=code, detail=items)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring :class:`ErrorBody` for each of ``statuses``."""
    described = {
        400: "Bad request",
        401: "No valid bearer token",
        403: "Not allowed for this user",
        404: "Unknown id",
        409: "The current state does not allow it",
        413: "Request body too large",
        422: "Invalid input; each item names the field",
        429: "Rate limited or queue full; see Retry-After",
        503: "Busy (store locked, telemetry down); see Retry-After",
    }
    return {s: {"model": ErrorBody, "description": described[s]} for s in statuses}


# Most specific first: the first class the exception is an instance of wins.
_STATUS: tuple[tuple[type[VigilError], int], ...] = (
    (Unauthorized, 401),
    (ApprovalError, 403),
    (NotFoundError, 404),
    (StateError, 409),
    (ConfigError, 422),
    (RateLimited, 429),
    (PoolFull, 429),
    (TelemetryError, 503),
    (RetryableError, 503),
)


def _is_contention(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "could not serialize" in text or "deadlock" in text


def install_error_handlers(app: FastAPI) -> None:
    """Map request validation errors, Vigil's errors and store contention onto HTTP answers."""

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, validation_items(exc.errors()))

    async def vigil(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VigilError)
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            _log.error("unhandled Vigil error: %s", exc, exc_info=exc)
        if isinstance(exc, ConfigError):
            return error_response(422, [ErrorItem(field=exc.field, message=exc.message)])
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        elif status in (429, 503):
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return error_response(status, [ErrorItem(field=None, message=str(exc))], headers)

    async def database(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if not _is_contention(exc):
            _log.error("database error: %s", exc, exc_info=exc)
            return error_response(500, [ErrorItem(field=None, message="internal database error")])
        # The stores retry contention themselves; one that escapes is still "try again".
        _log.warning("store contention reached the door: %s", exc.orig)
        message = "the state store is busy; retry later"
        return error_response(
            503, [ErrorItem(field=None, message=message)], {"Retry-After": str(RETRY_AFTER_S)}
        )

    async def http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        # FastAPI's own refusals (a body it cannot decode: 400), in the one error shape.
        field = "body" if exc.status_code == 400 else None
        item = ErrorItem(field=field, message=str(exc.detail))
        return error_response(exc.status_code, [item], dict(exc.headers or {}) or None)

    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(VigilError, vigil)
    app.add_exception_handler(DBAPIError, database)
