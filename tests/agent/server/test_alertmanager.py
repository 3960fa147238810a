"""POST /alerts/alertmanager: valid, malformed, duplicated and resolved payloads."""

from __future__ import annotations

import copy
from typing import Any

from fastapi.testclient import TestClient

from agent.server.alertmanager import AlertmanagerPayload, map_payload
from tests.agent.server.fakes import FakeInvestigator


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="RevenueDrop"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "vigil",
        "groupLabels": {"alertname": "RevenueDrop"},
        "commonLabels": {"alertname": "RevenueDrop", "severity": "page"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
        "someFutureField": {"Alertmanager": "adds fields"},
    }


def am_alert(
    fingerprint: str = "fp1",
    *,
    metric: str = "revenue",
    experiment: str | None = "879",
    status: str = "firing",
    starts: str = "2026-11-20T08:38:00Z",
) -> dict[str, Any]:
    labels = {"alertname": "RevenueDrop", "metric": metric}
    if experiment:
        labels["experiment_id"] = experiment
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "Revenue per request down 4% <!channel>"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-20T09:10:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def post(client: TestClient, body: Any) -> Any:
    return client.post("/alerts/alertmanager", json=body)


def test_firing_alert_starts_an_investigation(
    client: TestClient, investigator: FakeInvestigator
) -> None:
    r = post(client, payload(am_alert()))
    assert r.status_code == 202, r.text
    ids = r.json()["investigations"]
    assert len(ids) == 1
    assert client.app.state.vigil.pool.wait_idle(10)
    view = client.get(f"/investigations/{ids[0]}").json()
    assert view["status"] == "awaiting_approval"
    assert view["alert"]["metric"] == "revenue"
    assert view["alert"]["experiment"] == "879"
    assert view["alert"]["source"] == "alertmanager"
    assert view["alert"]["name"] == "RevenueDrop"
    assert view["alert"]["fingerprint"] == "fp1"
    assert view["root_causes"][0]["cause"] == "model_fallback"
    (m,) = view["mitigations"]
    assert {m["action"], m["target"], m["status"]} == {"kill_experiment", "879", "proposed"}
    listed = client.get("/investigations").json()
    assert [v["id"] for v in listed] == ids
    assert investigator.runs == ids


def test_global_alert_and_aliases(client: TestClient) -> None:
    r = post(client, payload(am_alert("g1", metric="latency", experiment=None)))
    assert r.status_code == 202, r.text
    (ident,) = r.json()["investigations"]
    alert = client.get(f"/investigations/{ident}").json()["alert"]
    assert alert["experiment"] is None
    assert alert["metric"] == "latency_p99"


def test_duplicate_does_not_start_a_second_investigation(
    client: TestClient, investigator: FakeInvestigator
) -> None:
    body = payload(am_alert("fp-dup"))
    first = post(client, body)
    again = post(client, body)
    assert first.status_code == again.status_code == 202
    (ident,) = first.json()["investigations"]
    assert again.json() == {
        "investigations": [],
        "duplicates": [ident],
        "resolved": 0,
        "refused": 0,
        "joined": [],
        "rejected": [],
        "detail": None,
    }
    # A new firing episode of the same alert (new startsAt) is a new investigation.
    later = post(client, payload(am_alert("fp-dup", starts="2026-11-20T10:00:00Z")))
    assert len(later.json()["investigations"]) == 1
    assert client.app.state.vigil.pool.wait_idle(10)
    assert len(investigator.runs) == 2


def test_resolved_alert_is_recorded_not_investigated(
    client: TestClient, investigator: FakeInvestigator
) -> None:
    post(client, payload(am_alert("fp-r")))
    r = post(client, payload(am_alert("fp-r", status="resolved"), status="resolved"))
    assert r.status_code == 202
    assert r.json()["investigations"] == [] and r.json()["resolved"] == 1
    ledger = client.app.state.vigil.ledger
    record = ledger.find("alertmanager", "fp-r@2026-11-20T08:38:00+00:00")
    assert record is not None and record.status == "resolved"
    assert record.resolved_at is not None and record.resolved_at.hour == 9
    assert record.investigation_id is not None
    assert client.app.state.vigil.pool.wait_idle(10)
    assert len(investigator.runs) == 1


def _field(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    return [d["field"] for d in response.json()["detail"]]


def test_malformed_payloads_name_the_field(client: TestClient) -> None:
    no_fp = am_alert()
    del no_fp["fingerprint"]
    assert _field(post(client, payload(no_fp))) == ["alerts[0].fingerprint"]

    bad_version = payload(am_alert())
    bad_version["version"] = "3"
    assert _field(post(client, bad_version)) == ["version"]

    no_alerts = payload()
    del no_alerts["alerts"]
    assert _field(post(client, no_alerts)) == ["alerts"]

    bad_time = am_alert()
    bad_time["startsAt"] = "yesterday"
    assert _field(post(client, payload(bad_time))) == ["alerts[0].startsAt"]

    bad_status = am_alert()
    bad_status["status"] = "pending"
    assert _field(post(client, payload(bad_status))) == ["alerts[0].status"]

    no_metric = am_alert()
    del no_metric["labels"]["metric"]
    assert _field(post(client, payload(no_metric))) == ["alerts[0].labels.metric"]

    unknown_metric = am_alert(metric="happiness")
    r = post(client, payload(unknown_metric))
    assert _field(r) == ["alerts[0].labels.metric"]
    assert "revenue" in r.json()["detail"][0]["message"]

    r = client.post(
        "/alerts/alertmanager", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _field(r) == ["body"]  # a field, not a character offset
    assert r.json()["error"] == "invalid"
    assert _field(post(client, [payload(am_alert())])) == ["body"]  # not an object

    future = am_alert("future", starts="9999-12-31T00:00:00Z")
    r = post(client, payload(future))
    assert _field(r) == ["alerts[0].startsAt"]
    assert "future" in r.json()["detail"][0]["message"]

    huge = am_alert("huge")
    huge["annotations"]["description"] = "x" * 100_000
    assert _field(post(client, payload(huge))) == ["alerts[0].annotations.description"]
    many = am_alert("many")
    many["labels"].update({f"l{i}": "v" for i in range(100)})
    assert _field(post(client, payload(many))) == ["alerts[0].labels"]
    negative = payload(am_alert())
    negative["truncatedAlerts"] = -1
    assert _field(post(client, negative)) == ["truncatedAlerts"]
    # Nothing malformed started anything.
    assert client.get("/investigations").json() == []


def test_label_mapping_is_configurable() -> None:
    body = payload(am_alert())
    body["alerts"][0]["labels"] = {"alertname": "X", "vigil_metric": "ctr", "exp": "42"}
    parsed = AlertmanagerPayload.model_validate(body)
    (mapped,) = map_payload(parsed, {"metric": "vigil_metric", "experiment": "exp"})
    assert mapped.alert.metric == "ctr" and mapped.alert.experiment == "42"
    # commonLabels fill in what an alert lacks; the alert's own labels win.
    body2 = copy.deepcopy(body)
    body2["commonLabels"]["vigil_metric"] = "ne"
    body2["alerts"][0]["labels"].pop("vigil_metric")
    (mapped2,) = map_payload(AlertmanagerPayload.model_validate(body2), {"metric": "vigil_metric"})
    assert mapped2.alert.metric == "ne"
    assert mapped2.alert.summary.startswith("Revenue per request")


def test_one_bad_alert_is_rejected_alone(
    client: TestClient, investigator: FakeInvestigator
) -> None:
    bad = am_alert("bad")
    del bad["labels"]["metric"]
    body = payload(am_alert("good1"), bad, am_alert("good2", experiment="880"))
    r = post(client, body)
    assert r.status_code == 202, r.text
    answer = r.json()
    assert len(answer["investigations"]) == 2
    assert [i["field"] for i in answer["rejected"]] == ["alerts[1].labels.metric"]
    assert client.app.state.vigil.pool.wait_idle(10)
    investigated = sorted(investigator.get(i).alert.fingerprint or "" for i in investigator.runs)
    assert investigated == ["good1", "good2"]
    # Alertmanager resends the whole group: the good ones are duplicates, the bad one still bad.
    again = post(client, body).json()
    assert sorted(again["duplicates"]) == sorted(answer["investigations"])
    assert [i["field"] for i in again["rejected"]] == ["alerts[1].labels.metric"]


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.vigil.settings.max_request_bytes
    big = am_alert("big")
    big["annotations"]["summary"] = "x" * limit
    r = post(client, payload(big))
    assert r.status_code == 413
    assert r.json()["error"] == "too_large" and r.json()["detail"][0]["field"] == "body"

    def chunks() -> Any:  # streamed, no Content-Length: still refused
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = client.post(
        "/alerts/alertmanager", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert client.get("/investigations").json() == []
