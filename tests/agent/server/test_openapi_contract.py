"""The OpenAPI document matches the answers: Schemathesis over every endpoint, zero failures.

A real uvicorn server on loopback runs the real ``Investigator`` (no telemetry: investigations
fail fast, which is an answer like any other) and the real experiment core. Schemathesis' CLI
(the tool the issue was found with) drives every operation through its coverage, fuzzing and
stateful phases with a bounded example count and a fixed seed, authenticated as the on-call user
so that approvals and rejections get past the door; every answer must be documented (status,
content type, body schema) and none may be a 5xx.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.server import create_app
from agent.service import Investigator
from tests.agent.server.conftest import make_settings
from tests.agent.server.fakes import make_experiments
from tests.loopback import LoopbackServer

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)
MAX_EXAMPLES = 5
SEED = 20261207


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoopbackServer]:
    settings = make_settings(tmp_path, queue_size=4)
    experiments = make_experiments(settings.state_url)
    investigator = Investigator(settings)
    app = create_app(settings, investigator=investigator, experiments=experiments)
    with LoopbackServer(app) as running:
        yield running
    investigator.close()
    experiments.close()


def test_every_answer_is_documented(server: LoopbackServer, tmp_path: Path) -> None:
    started = time.monotonic()
    st = Path(sys.executable).with_name("st")
    # Known experiments, so that kill proposals succeed and their links reach approve / reject.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.experiment_id" = "879"\n')
    run = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--header",
            "Authorization: Bearer tok-carol",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert "11 selected / 11 total" in report  # every operation was exercised
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200  # and the server is still up
    print(f"schemathesis: {time.monotonic() - started:.1f} s")


def test_document_declares_the_error_body_and_media_types(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    error = "#/components/schemas/ErrorBody"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    (media,) = response["content"]
                    ref = response["content"][media]["schema"]["$ref"]
                    assert media == "application/json", (method, path, status)
                    assert ref == error or (path, status) == ("/alerts/alertmanager", "429")
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"
    ]
    approve = document["paths"]["/mitigations/{mitigation_id}/approve"]["post"]["responses"]
    assert {"401", "403", "404", "409", "503"} <= set(approve)
    webhook = document["paths"]["/alerts/alertmanager"]["post"]
    body = webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/AlertmanagerPayload")
    assert {"202", "413", "422", "429"} <= set(webhook["responses"])
    assert "HTTPValidationError" not in str(document)
    # The 422 the server really sends has the documented shape.
    r = client.get("/investigations", params={"limit": "many"})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail"}
    assert r.json()["detail"] == [{"field": "limit", "message": r.json()["detail"][0]["message"]}]
