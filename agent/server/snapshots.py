"""The snapshot endpoints of ``vigil serve``: configuration distribution to serving processes.

``GET /snapshots/latest`` answers the signed envelope of the newest configuration snapshot
(:func:`lifecycle.wire.encode_envelope`) with the version as ETag (``If-None-Match`` gives 304);
``GET /snapshots/stream`` is a server-sent event stream: a ``snapshot`` event with the full snapshot
first, then one ``delta`` event per new version (:func:`lifecycle.wire.encode_delta`: the
experiments that changed), the version as event id, so a subscriber that reconnects with
``Last-Event-ID`` gets only what is newer. :class:`lifecycle.remote.RemoteAllocator` is the
subscriber.

A :class:`SnapshotPublisher` notices new versions by reading the state version (the id of the
newest audit entry: one indexed ``max``) at most every ``snapshot_poll_s`` seconds, however many
subscribers ask, so a change made by any process (the CLI, an approved mitigation, the rollout
controller) is published within that interval. Without ``VIGIL_SNAPSHOT_KEY`` nothing could be
signed, and the endpoints are not mounted (404).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.params import Depends as DependsParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from agent.settings import Settings
from lifecycle.allocation import ConfigSnapshot
from lifecycle.wire import encode_delta, encode_envelope

__all__ = ["Published", "SnapshotPublisher", "SnapshotSource", "snapshot_router"]


class SnapshotSource(Protocol):
    """Where snapshots come from: ``lifecycle.ExperimentService`` is one."""

    def version(self) -> int:
        """Version of the stored state."""
        ...

    def snapshot(self) -> ConfigSnapshot:
        """A fresh snapshot of the stored state."""
        ...


@dataclass
class Published:
    """One published version: the snapshot, its signed delta from the version published before
    (None for the first), and how long building it took. The full envelope is signed on first
    use: a subscriber that follows the stream never needs it."""

    snapshot: ConfigSnapshot
    key: bytes
    build_ms: float
    delta: str | None = None
    base: int | None = None
    _envelope: str | None = None

    @property
    def version(self) -> int:
        """The snapshot's version."""
        return self.snapshot.version

    @property
    def envelope(self) -> str:
        """The signed envelope of the full snapshot."""
        if self._envelope is None:
            self._envelope = encode_envelope(self.snapshot, self.key)
        return self._envelope

    @property
    def etag(self) -> str:
        """The HTTP entity tag of this version."""
        return f'"{self.version}"'


class SnapshotPublisher:
    """The newest signed snapshot of a source, rebuilt only when the state version moves.

    Args:
        source: Reads the state version and builds snapshots (opened lazily when a factory).
        key: The shared HMAC key.
        poll_s: The state version is read at most once per this many seconds.
    """

    def __init__(self, source: Callable[[], SnapshotSource], key: bytes, poll_s: float) -> None:
        self._factory = source
        self._source: SnapshotSource | None = None
        self._key = key
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._published: Published | None = None
        self._snapshot: ConfigSnapshot | None = None
        self._checked = 0.0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def poll_s(self) -> float:
        """The polling interval."""
        return self._poll_s

    def fresh(self) -> Published | None:
        """The published version when it was checked within the interval (no I/O), else None."""
        published = self._published
        if published is not None and time.monotonic() - self._checked < self._poll_s:
            return published
        return None

    def latest(self) -> Published:
        """The newest published version, checking the state version when the last check is old."""
        with self._lock:
            now = time.monotonic()
            published = self._published
            if published is not None and now - self._checked < self._poll_s:
                return published
            if self._source is None:
                self._source = self._factory()
            source = self._source
            if published is None or source.version() != published.version:
                started = time.perf_counter()
                snapshot = source.snapshot()
                previous = self._snapshot
                delta = None if previous is None else encode_delta(previous, snapshot, self._key)
                build_ms = (time.perf_counter() - started) * 1e3
                base = None if previous is None else previous.version
                published = Published(snapshot, self._key, build_ms, delta, base)
                self._published, self._snapshot = published, snapshot
                self._wake_all()
            self._checked = time.monotonic()
            return published

    def _wake_all(self) -> None:
        """Wake every stream waiting in :meth:`newer` (from whichever thread published)."""
        for waiter in list(self._waiters):
            try:
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # its event loop is closed: nobody is waiting on it any more
                self._waiters.discard(waiter)

    async def newer(self, version: int, timeout: float) -> None:
        """Return when a version newer than ``version`` is published, or after ``timeout``.

        One stream's check of the state version publishes for all of them: the others are
        woken at once instead of at their own next check (at most ``poll_s`` later each).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            published = self._published
            if published is not None and published.version > version:
                return
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return
        finally:
            self._waiters.discard(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _event(published: Published, after: int) -> bytes:
    """The delta when the subscriber holds its base, else the full snapshot (signed off the
    event loop: at a thousand experiments that is milliseconds of work)."""
    if published.delta is not None and published.base == after:
        kind, data = "delta", published.delta
    else:
        kind, data = "snapshot", await run_in_threadpool(lambda: published.envelope)
    return f"id: {published.version}\nevent: {kind}\ndata: {data}\n\n".encode()


async def _current(publisher: SnapshotPublisher) -> Published:
    published = publisher.fresh()
    if published is None:
        published = await run_in_threadpool(publisher.latest)
    return published


async def _stream(
    publisher: SnapshotPublisher, request: Request, after: int, heartbeat_s: float
) -> AsyncIterator[bytes]:
    sent = after
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        published = await _current(publisher)
        if published.version > sent:
            event = await _event(published, sent)
            sent = published.version
            quiet_since = time.monotonic()
            yield event
            continue  # a newer version may have been published meanwhile
        if time.monotonic() - quiet_since >= heartbeat_s:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await publisher.newer(sent, publisher.poll_s)


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "-1"
    try:
        return int(raw)
    except ValueError:
        return -1  # an id we never sent: start from the newest


def _default_source(settings: Settings, experiments: object) -> Callable[[], SnapshotSource]:
    from lifecycle.service import ExperimentService

    def factory() -> SnapshotSource:
        if isinstance(experiments, ExperimentService):
            return experiments
        return ExperimentService.from_settings(settings)

    return factory


def snapshot_router(
    settings: Settings,
    experiments: object,
    *,
    dependencies: Sequence[DependsParam] = (),
    source: Callable[[], SnapshotSource] | None = None,
) -> APIRouter:
    """The snapshot endpoints, for ``create_app`` to mount.

    Args:
        settings: ``snapshot_key``, ``snapshot_poll_s``, ``snapshot_heartbeat_s``.
        experiments: The app's experiment core; used as the source when it is an
            ``ExperimentService``, else one is opened on ``settings.state_url`` at first use.
        dependencies: Dependencies every endpoint runs (the read token, when reads need one).
        source: A factory of the snapshot source, replacing the above (tests).
    """
    router = APIRouter(prefix="/snapshots", tags=["snapshots"], dependencies=list(dependencies))
    if not settings.snapshot_key:
        return router  # nothing to sign with: no snapshot endpoints
    key = settings.snapshot_key.encode("utf-8")
    publisher = SnapshotPublisher(
        source or _default_source(settings, experiments), key, settings.snapshot_poll_s
    )

    @router.get("/latest", responses={304: {"description": "Not modified"}})
    async def latest_snapshot(request: Request) -> Any:
        """The newest signed snapshot envelope; ETag is its version."""
        published = await _current(publisher)
        headers = {"ETag": published.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == published.etag:
            return Response(status_code=304, headers=headers)
        envelope = await run_in_threadpool(lambda: published.envelope)
        return Response(envelope, media_type="application/json", headers=headers)

    @router.get(
        "/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def snapshot_stream(request: Request) -> Any:
        """Server-sent events: one ``snapshot`` event per new version (id = version)."""
        body = _stream(publisher, request, _last_event_id(request), settings.snapshot_heartbeat_s)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    return router
