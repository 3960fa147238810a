"""Request and response bodies of the HTTP API, and the OpenAPI document that declares them.

The Alertmanager webhook reads its body itself (each alert is validated on its own, so that one
bad alert does not sink its batch); :func:`install_openapi` still declares the full
:class:`~agent.server.alertmanager.AlertmanagerPayload` as its request body, so the document says
what a sender must send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from agent.models import AlertMetric
from agent.server.alertmanager import AlertmanagerPayload
from agent.server.errors import ErrorItem

__all__ = [
    "ALERTMANAGER_BODY",
    "AlertBatchResult",
    "Health",
    "InvestigateRequest",
    "KillRequest",
    "install_openapi",
]

_COMPONENTS = "#/components/schemas/{model}"
ALERTMANAGER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": _COMPONENTS.format(model="AlertmanagerPayload")}
            }
        },
    }
}


class KillRequest(BaseModel):
    """Body of ``POST /experiments/{id}/kill`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class InvestigateRequest(BaseModel):
    """Body of ``POST /investigations``: what to investigate."""

    model_config = ConfigDict(extra="forbid")

    metric: AlertMetric
    experiment: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="None for a global metric.",
    )
    since: datetime | None = Field(default=None, description="Start of the window to look at.")
    summary: str = Field(default="", max_length=2000, description="Why (shown in the report).")


class AlertBatchResult(BaseModel):
    """What became of a webhook's alerts (202; 429 when some were refused for a full queue)."""

    model_config = ConfigDict(extra="forbid")

    investigations: list[str] = Field(description="Investigations started now.")
    duplicates: list[str] = Field(
        description="Investigations earlier copies of an alert started ('' while still starting)."
    )
    resolved: int = Field(description="Resolutions recorded.")
    refused: int = Field(default=0, description="Firing alerts refused: the queue is full.")
    joined: list[str] = Field(
        default_factory=list,
        description="Open investigations of the same scope that alerts joined instead of "
        "starting their own (one incident, one investigation).",
    )
    rejected: list[ErrorItem] = Field(
        default_factory=list, description="Invalid alerts, each problem naming its field."
    )
    detail: str | None = Field(default=None, description="Why some were refused.")


class Health(BaseModel):
    """``GET /healthz``."""

    status: str
    queue_depth: int
    running: int
    capacity: int
    slack: bool


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare the models the app validates by hand."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        payload = AlertmanagerPayload.model_json_schema(ref_template=_COMPONENTS)
        for name, schema in payload.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
        schemas["AlertmanagerPayload"] = payload
        _errors_as_json(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _errors_as_json(document: dict[str, Any]) -> None:
    """Declare every error answer as JSON, also on routes whose success is HTML or text."""
    error_ref = {"$ref": _COMPONENTS.format(model="ErrorBody")}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not str(status).startswith(("4", "5")):
                    continue
                content = response.get("content", {})
                schema = next((c.get("schema") for c in content.values() if c.get("schema")), None)
                if schema is None or "HTTPValidationError" in str(schema.get("$ref")):
                    # FastAPI's own 422 declares {loc, msg, type}; Vigil answers ErrorBody.
                    schema = error_ref
                    response["description"] = response.get("description") or "Invalid input"
                response["content"] = {"application/json": {"schema": schema}}
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
