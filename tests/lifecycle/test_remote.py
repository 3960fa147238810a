"""Configuration distribution: signed snapshots, the SSE stream of ``vigil serve``, RemoteAllocator.

A real uvicorn server on loopback serves the snapshot router over a real experiment store; the
failure tests restart it on the same port with a wrong key, a truncated stream, or an older store,
and the subscriber must keep serving its last good snapshot and converge once the server is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from agent.server.snapshots import SnapshotPublisher, snapshot_router
from agent.settings import Settings
from lifecycle.allocation import assignments, build_snapshot
from lifecycle.allocator import Allocator
from lifecycle.config import Arm, Experiment, ExperimentFile, Layer
from lifecycle.remote import BackgroundRefresh, RemoteAllocator
from lifecycle.service import ExperimentService
from lifecycle.wire import (
    apply_delta,
    decode_envelope,
    encode_delta,
    encode_envelope,
    snapshot_from_json,
    snapshot_to_json,
)
from tests.loopback import LoopbackServer
from tools.errors import ConfigError, SnapshotUnavailable, StateError

KEY = "test-snapshot-key"


def _file(n: int = 6) -> ExperimentFile:
    return ExperimentFile(
        layers=[Layer(id="ranking"), Layer(id="ad_load")],
        experiments=[
            Experiment(
                id=f"e{i}",
                name=f"e{i}",
                owner="o",
                layer=["ranking", "ad_load"][i % 2],
                traffic_pct=30,
                arms={"control": Arm(weight=1), "test": Arm(weight=1)},
                targeting={"country": ["US"]} if i == 4 else {},
                forced={"vip": "test"} if i == 5 else {},
            )
            for i in range(n)
        ],
    )


def _service(tmp_path: Path, name: str = "state.db") -> ExperimentService:
    service = ExperimentService(f"sqlite:///{tmp_path / name}")
    service.create(_file(), "setup", start=True)
    return service


def _settings(tmp_path: Path, key: str | None = KEY) -> Settings:
    return Settings(
        home=tmp_path,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        snapshot_key=key,
        snapshot_poll_s=0.01,
        snapshot_heartbeat_s=0.2,
    )


def _app(settings: Settings, service: ExperimentService) -> FastAPI:
    app = FastAPI()
    app.include_router(snapshot_router(settings, service))
    return app


class Server(LoopbackServer):
    """The snapshot server: no lifespan, and open event streams are cut at exit."""

    def __init__(self, app: Any, port: int = 0) -> None:
        super().__init__(app, port, lifespan="off", force_exit=True)


def _until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _treated(allocator: Any, experiment_id: str) -> dict[str, Any]:
    return next(
        {"unit_id": u}
        for u in range(100_000)
        if allocator.is_enabled({"unit_id": u, "country": "US"}, experiment_id)
    )


@pytest.fixture
def remote_factory() -> Iterator[Any]:
    made: list[RemoteAllocator] = []

    def make(url: str, key: str = KEY) -> RemoteAllocator:
        remote = RemoteAllocator(url, key, backoff_s=(0.02, 0.2), heartbeat_s=0.2)
        made.append(remote)
        return remote

    yield make
    for remote in made:
        remote.close()


# --- the wire format -------------------------------------------------------------------------


def test_a_snapshot_survives_the_wire_and_allocates_identically(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.kill("e1", "oncall", "bad", scope="experiment")
    snapshot = service.snapshot()
    rebuilt = snapshot_from_json(snapshot_to_json(snapshot))
    assert rebuilt == snapshot
    decoded = decode_envelope(encode_envelope(snapshot, KEY.encode()), KEY.encode())
    assert decoded == snapshot
    local, remote = Allocator(snapshot), Allocator(decoded)
    rng = np.random.default_rng(7)
    for u in [*rng.integers(-(2**62), 2**62, 500).tolist(), "vip", "user-1"]:
        request = {"unit_id": u, "country": "US"}
        assert remote.assignments(request) == local.assignments(request)
        assert remote.assignments(request) == assignments(snapshot, request)


def test_garbage_and_bad_signatures_are_refused_naming_the_field() -> None:
    file = _file()
    snapshot = build_snapshot(file.layers, file.experiments)
    good = encode_envelope(snapshot, b"k")
    with pytest.raises(ConfigError) as err:
        decode_envelope(good, b"other key")
    assert err.value.field == "envelope.signature"
    with pytest.raises(ConfigError) as err:
        decode_envelope(b"not json at all", b"k")
    assert err.value.field == "envelope"
    forged = good.replace('\\"version\\":1', '\\"version\\":99')
    with pytest.raises(ConfigError) as err:
        decode_envelope(forged, b"k")
    assert err.value.field == "envelope.signature"
    with pytest.raises(ConfigError) as err:
        snapshot_from_json(
            '{"version":1,"experiments":[{"id":"x"}],"kill_switches":[],"blocked":[],"layers":{}}'
        )
    assert err.value.field.startswith("snapshot.experiments.0.")


def test_a_delta_carries_only_what_changed_and_needs_its_base(tmp_path: Path) -> None:
    service = _service(tmp_path)
    key = KEY.encode()
    before = service.snapshot()
    service.kill("e3", "oncall", "bad")
    after = service.snapshot()
    delta = encode_delta(before, after, key)
    assert len(delta) < len(encode_envelope(after, key)) / 2
    applied = apply_delta(before, delta, key)
    assert applied == after
    # Unchanged experiments keep their objects, so a swap recompiles only the changed one.
    changed = [i for i in after.experiments if applied.experiments[i] is not before.experiments[i]]
    assert changed == ["e3"]
    allocator = Allocator(before)
    assert allocator.swap(applied) and allocator.recompiled == 1
    with pytest.raises(ConfigError) as err:
        apply_delta(after, delta, key)  # not its base
    assert err.value.field == "envelope.base"
    with pytest.raises(ConfigError) as err:
        apply_delta(before, delta.replace('"base":', '"base":1', 1), key)  # base not signed
    assert err.value.field.startswith("envelope")
    with pytest.raises(ConfigError) as err:
        decode_envelope(delta, key)  # a delta is not a full snapshot
    assert err.value.field == "envelope.base"


def test_latest_endpoint_has_an_etag_and_is_absent_without_a_key(tmp_path: Path) -> None:
    service = _service(tmp_path)
    with TestClient(_app(_settings(tmp_path), service)) as client:
        first = client.get("/snapshots/latest")
        assert first.status_code == 200
        assert first.headers["etag"] == f'"{service.version()}"'
        assert decode_envelope(first.content, KEY.encode()).version == service.version()
        again = client.get("/snapshots/latest", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        service.kill("e0", "oncall", "bad")
        time.sleep(0.02)
        newer = client.get("/snapshots/latest", headers={"If-None-Match": first.headers["etag"]})
        assert newer.status_code == 200
        assert "e0" in decode_envelope(newer.content, KEY.encode()).blocked
    with TestClient(_app(_settings(tmp_path, key=None), service)) as client:
        # Nothing to sign with: no snapshot endpoints at all.
        assert client.get("/snapshots/latest").status_code == 404
        assert client.get("/snapshots/stream").status_code == 404


def test_one_check_of_the_state_wakes_every_waiting_stream_at_once(tmp_path: Path) -> None:
    # Each stream waits up to its poll interval between checks; the first that sees a new
    # version publishes it for all, and the others must not wait out their own interval.
    service = _service(tmp_path)
    publisher = SnapshotPublisher(lambda: service, KEY.encode(), poll_s=0.01)
    first = publisher.latest()

    async def scenario() -> float:
        waiters = [asyncio.create_task(publisher.newer(first.version, 30.0)) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)  # nothing new: they keep waiting
        service.kill("e0", "oncall", "revenue down")
        began = time.monotonic()
        published = await asyncio.to_thread(publisher.latest)  # as a stream's check does
        assert published.version > first.version and published.delta is not None
        await asyncio.wait_for(asyncio.gather(*waiters), 5.0)
        # Already newer than the caller's version: no wait at all.
        await asyncio.wait_for(publisher.newer(first.version, 30.0), 1.0)
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5.0


def test_background_refresh_installs_another_process_kill_off_the_serving_thread(
    tmp_path: Path,
) -> None:
    serving = _service(tmp_path)
    allocator = serving.allocator()
    request = _treated(allocator, "e0")
    cli = ExperimentService(f"sqlite:///{tmp_path / 'state.db'}")  # another process's view
    with BackgroundRefresh(serving, interval_s=0.01) as feed:
        cli.kill("e0", "oncall", "revenue down")
        # This thread only reads: the refresh thread installs the kill.
        assert _until(lambda: not allocator.is_enabled(request, "e0"), timeout=3.0)
        assert feed.refreshed >= 1 and feed.last_error is None
        assert allocator.recompiled == 1  # incremental: only the killed experiment
        assert allocator.version == cli.version()
    with pytest.raises(ConfigError, match="interval_s"):
        BackgroundRefresh(serving, interval_s=0)
    cli.close()
    serving.close()


# --- the subscriber --------------------------------------------------------------------------


def test_a_kill_reaches_the_subscriber_within_a_second(tmp_path: Path, remote_factory: Any) -> None:
    service = _service(tmp_path)
    with Server(_app(_settings(tmp_path), service)) as server:
        remote = remote_factory(server.url)
        with pytest.raises(SnapshotUnavailable):
            remote.is_enabled({"unit_id": 1}, "e0")
        assert remote.wait(timeout=5)
        request = _treated(remote, "e0")
        version = remote.version
        started = time.monotonic()
        service.kill("e0", "oncall", "revenue down")
        assert _until(lambda: not remote.is_enabled(request, "e0"), timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert remote.version > version
        health = remote.health()
        assert health.status == "ok" and health.connected and health.rejected == 0
        assert health.deltas >= 1  # the kill came as a delta on top of the first snapshot
        # A release and a ramp are published the same way.
        service.release("e0", "oncall", "fixed")
        assert _until(lambda: remote.version == service.version())
        assert remote.snapshot == service.snapshot()


def test_bad_signature_truncated_stream_and_restarts_keep_the_last_good_snapshot(
    tmp_path: Path, remote_factory: Any
) -> None:
    service = _service(tmp_path)
    settings = _settings(tmp_path)
    with Server(_app(settings, service)) as server:
        port, url = server.port, server.url
        remote = remote_factory(url)
        assert remote.wait(timeout=5)
    good = remote.version
    request = _treated(remote, "e0")

    # 1. The server is down: the subscriber keeps serving, and says so.
    assert _until(lambda: not remote.health().connected)
    assert remote.is_enabled(request, "e0")
    assert remote.health().status == "degraded"

    # 2. A server with the wrong key publishes a kill: refused, the old snapshot still serves.
    service.kill("e0", "oncall", "bad")
    wrong = Settings(**{**settings.model_dump(), "snapshot_key": "not the key"})
    with Server(_app(wrong, service), port=port):
        assert _until(lambda: remote.health().rejected >= 1)
        assert remote.version == good
        assert remote.is_enabled(request, "e0")
        assert "signature" in (remote.health().last_error or "")

    # 3. A stream cut in the middle of an update: nothing of it is applied.
    envelope = encode_envelope(service.snapshot(), KEY.encode())
    cut = FastAPI()

    @cut.get("/snapshots/stream")
    async def truncated() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield f"id: {service.version()}\nevent: snapshot\ndata: {envelope[:200]}".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    with Server(cut, port=port):
        reconnects = remote.health().reconnects
        assert _until(lambda: remote.health().reconnects >= reconnects + 2)
        assert remote.version == good
        assert remote.is_enabled(request, "e0")

    # 3b. A delta whose base is not the snapshot served (a missed event): not applied; the
    # subscriber reconnects to be sent a full snapshot.
    off_base = FastAPI()
    base = build_snapshot(_file().layers, _file().experiments, version=good - 1)
    wrong_base = encode_delta(base, service.snapshot(), KEY.encode())

    @off_base.get("/snapshots/stream")
    async def skipped() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield f"id: {service.version()}\nevent: delta\ndata: {wrong_base}\n\n".encode()
            await asyncio.sleep(30)

        return StreamingResponse(body(), media_type="text/event-stream")

    with Server(off_base, port=port):
        reconnects = remote.health().reconnects
        assert _until(lambda: remote.health().reconnects >= reconnects + 2)
        assert remote.version == good
        assert "missed its base" in (remote.health().last_error or "")

    # 4. An older store behind the same address: never back in version.
    older = ExperimentService(f"sqlite:///{tmp_path / 'older.db'}")
    older.create(_file(2), "setup")
    assert older.version() < good
    with Server(_app(_settings(tmp_path), older), port=port):
        assert _until(lambda: remote.health().connected)
        time.sleep(0.1)
        assert remote.version == good

    # 5. The real server is back: the subscriber converges on the kill.
    with Server(_app(settings, service), port=port):
        assert _until(lambda: remote.version == service.version())
        assert not remote.is_enabled(request, "e0")
        assert remote.health().status == "ok"


def test_background_refresh_outlives_a_failure_and_says_so() -> None:
    # A refresh that fails with anything (here a terminal error, then a bug) must not stop the
    # thread: a dead thread would serve its last snapshot forever, without a kill, silently.
    seen: list[str | None] = []

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0
            self.feed: BackgroundRefresh | None = None

        def refresh(self) -> bool:
            self.calls += 1
            if self.feed is not None:
                seen.append(self.feed.last_error)  # what the previous tick left to read
            if self.calls == 1:
                raise StateError("state store schema is newer than this code")
            if self.calls == 2:
                raise RuntimeError("bug")
            return True

    flaky = Flaky()
    with BackgroundRefresh(flaky, interval_s=0.01) as feed:
        flaky.feed = feed
        assert _until(lambda: feed.refreshed >= 1, timeout=3.0)
        assert feed.last_error is None
    assert "RuntimeError: bug" in seen  # shown after the bug, then cleared by a good tick
