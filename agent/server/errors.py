"""HTTP status codes for Vigil's error hierarchy, and one error body shape.

Every error answers ``{"detail": [{"field": ..., "message": ...}, ...]}`` (``field`` is the dotted
path of the offending input, e.g. ``alerts[0].fingerprint``, or ``null`` when no field is at
fault), so that a caller can always tell which field to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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

__all__ = ["Unauthorized", "field_path", "install_error_handlers"]

_log = logging.getLogger(__name__)


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


def _body(status: int, items: list[dict[str, Any]], **headers: str) -> JSONResponse:
    return JSONResponse({"detail": items}, status_code=status, headers=headers or None)


def _one(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return _body(status, [{"field": field, "message": message}], **headers)


# Most specific first: Starlette picks a handler by the exception's class hierarchy.
_STATUS: tuple[tuple[type[VigilError], int], ...] = (
    (Unauthorized, 401),
    (ApprovalError, 403),
    (NotFoundError, 404),
    (StateError, 409),
    (ConfigError, 422),
    (PoolFull, 429),
    (TelemetryError, 503),
    (RetryableError, 503),
)


def install_error_handlers(app: FastAPI) -> None:
    """Map request validation errors and Vigil's errors onto HTTP answers."""

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        items = [
            {"field": field_path(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return _body(422, items)

    async def vigil(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VigilError)
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            _log.error("unhandled Vigil error: %s", exc, exc_info=exc)
        if isinstance(exc, ConfigError):
            return _one(422, exc.message, exc.field)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        elif status in (429, 503):
            headers["Retry-After"] = "30"
        return _one(status, str(exc), **headers)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(VigilError, vigil)
