"""Configuration distribution: signed snapshots on the wire, and the :class:`RemoteAllocator`.

``vigil serve`` publishes every new version of the configuration snapshot (a kill, a release, a
ramp, a new experiment) as a signed envelope (:mod:`lifecycle.wire`): the snapshot as compact JSON
text, its version, and the HMAC-SHA256 of that text under a key shared with the subscribers. The
same envelope is the body of ``GET /snapshots/latest`` (with an ETag) and the data of the first
``snapshot`` event of the server-sent event stream ``GET /snapshots/stream``; each later version
comes as a ``delta`` event (only the experiments that changed) on top of the one before. The event
id is the version, so a subscriber that reconnects with ``Last-Event-ID`` receives only what is
newer, and one that missed an event reconnects for a full snapshot.

A :class:`RemoteAllocator` serves allocation in a process that has no database: a background
thread reads the stream, verifies each envelope, rebuilds the snapshot, compiles it (off the
serving threads) and swaps it in. It never goes back in version, keeps serving the last good
snapshot when the server is unreachable or sends garbage or a bad signature, says so in
:meth:`RemoteAllocator.health`, and reconnects with capped exponential backoff and jitter.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import httpx

from lifecycle.allocation import ConfigSnapshot
from lifecycle.allocator import Allocator
from lifecycle.shadow import ShadowArm
from lifecycle.wire import apply_delta, decode_envelope, envelope_base
from tools.errors import ConfigError, SnapshotUnavailable

__all__ = ["BackgroundRefresh", "RemoteAllocator", "RemoteHealth"]


class _OutOfStep(Exception):
    """A delta arrived for a base this subscriber does not serve: resynchronise."""


HealthStatus = Literal["starting", "ok", "degraded"]


@dataclass(frozen=True, slots=True)
class RemoteHealth:
    """What a :class:`RemoteAllocator` knows about its feed.

    ``status`` is ``starting`` before the first good snapshot, ``degraded`` while disconnected or
    after a refused update (it serves the last good snapshot), ``ok`` otherwise. ``updates``
    counts the snapshots installed, ``deltas`` those of them that came as deltas.
    """

    status: HealthStatus
    version: int | None
    connected: bool
    updates: int
    rejected: int
    reconnects: int
    last_error: str | None
    last_update_at: float | None
    deltas: int = 0


@dataclass(frozen=True, slots=True)
class _Event:
    id: str | None
    event: str
    data: str


def _sse_events(lines: Iterator[str]) -> Iterator[_Event]:
    """Server-sent events from a line iterator; an event cut off by the stream's end is dropped."""
    event_id: str | None = None
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield _Event(event_id, name, "\n".join(data))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value


class RemoteAllocator:
    """Allocation served from the snapshot stream of a ``vigil serve`` at ``url``.

    Args:
        url: Base URL of the server, e.g. ``http://vigil:8080``.
        key: The shared snapshot key (``VIGIL_SNAPSHOT_KEY`` of the server).
        token: A bearer token, when the server requires one for reads.
        backoff_s: First and largest wait between two reconnections (doubling, with jitter).
        timeout_s: Connect timeout; a stream silent for four heartbeats is reconnected too.
        heartbeat_s: The server's heartbeat interval (``VIGIL_SNAPSHOT_HEARTBEAT_S``).
        client: An ``httpx.Client`` to use (tests and custom transports); one is made if None.
    """

    def __init__(
        self,
        url: str,
        key: str | bytes,
        *,
        token: str | None = None,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        timeout_s: float = 5.0,
        heartbeat_s: float = 15.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not key:
            raise ConfigError("key", key, "a shared snapshot key is required")
        self._url = url.rstrip("/") + "/snapshots/stream"
        self._key = key.encode("utf-8") if isinstance(key, str) else key
        self._headers = {"Accept": "text/event-stream"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._backoff = backoff_s
        self._backoff_now = backoff_s[0]
        self._timeout = httpx.Timeout(timeout_s, read=4 * heartbeat_s)
        self._client = client or httpx.Client()
        self._owns_client = client is None
        self._allocator: Allocator | None = None
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._health = RemoteHealth("starting", None, False, 0, 0, 0, None, None)
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="vigil-snapshots", daemon=True)
        self._thread.start()

    # --- serving ---------------------------------------------------------------------------

    def _current(self) -> Allocator:
        allocator = self._allocator
        if allocator is None:
            raise SnapshotUnavailable(f"no configuration snapshot yet from {self._url}")
        return allocator

    @property
    def version(self) -> int | None:
        """Version of the snapshot being served (None before the first one)."""
        allocator = self._allocator
        return None if allocator is None else allocator.version

    @property
    def snapshot(self) -> ConfigSnapshot:
        """The snapshot being served (:class:`SnapshotUnavailable` before the first one)."""
        return self._current().snapshot

    def is_enabled(self, request: Mapping[str, Any], experiment_id: str) -> bool:
        """:meth:`Allocator.is_enabled` on the latest good snapshot.

        Raises:
            SnapshotUnavailable: Before the first good snapshot arrived.
        """
        return self._current().is_enabled(request, experiment_id)

    def assign(self, request: Mapping[str, Any], experiment_id: str) -> str | None:
        """:meth:`Allocator.assign` on the latest good snapshot."""
        return self._current().assign(request, experiment_id)

    def assignments(self, request: Mapping[str, Any]) -> dict[str, str]:
        """:meth:`Allocator.assignments` on the latest good snapshot."""
        return self._current().assignments(request)

    def shadow_arms(self, request: Mapping[str, Any]) -> list[ShadowArm]:
        """:meth:`Allocator.shadow_arms` on the latest good snapshot (issue 18)."""
        return self._current().shadow_arms(request)

    def health(self) -> RemoteHealth:
        """The feed's state: version served, connection, refused updates, last error."""
        return self._health

    def wait(self, newer_than: int | None = None, timeout: float | None = None) -> bool:
        """Block until a snapshot newer than ``newer_than`` (any, when None) is served.

        Returns:
            True when one is; False on timeout or when closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._closed.is_set():
                version = self.version
                if version is not None and (newer_than is None or version > newer_than):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return False

    def close(self) -> None:
        """Stop the background thread and close the connection."""
        self._closed.set()
        response = self._response
        if response is not None:
            response.close()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(5)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RemoteAllocator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the feed (background thread) ------------------------------------------------------

    def _note(self, **changes: Any) -> None:
        self._health = replace(self._health, **changes)

    def _refuse(self, exc: ConfigError) -> None:
        self._note(
            status="degraded" if self._allocator else "starting",
            rejected=self._health.rejected + 1,
            last_error=str(exc),
        )

    def _apply(self, data: str) -> bool:
        """Apply one envelope (full or delta).

        Returns:
            False when a delta does not apply to the snapshot served (a missed event): the
            caller reconnects and the server sends the full snapshot.
        """
        current = self._allocator
        try:
            base = envelope_base(data)
            if base is None:
                snapshot = decode_envelope(data, self._key)
            elif current is None or base != current.version:
                return False
            else:
                snapshot = apply_delta(current.snapshot, data, self._key)
        except ConfigError as exc:
            self._refuse(exc)
            return True
        if current is not None and snapshot.version <= current.version:
            return True  # never back in version (a restarted server, a replayed event)
        if current is None:
            allocator = Allocator(snapshot)
        else:
            current.swap(snapshot)  # compiled here, off the serving threads
            allocator = current
        with self._changed:
            self._allocator = allocator
            self._changed.notify_all()
        self._note(
            status="ok",
            version=snapshot.version,
            updates=self._health.updates + 1,
            deltas=self._health.deltas + (base is not None),
            last_error=None,
            last_update_at=time.time(),
        )
        return True

    def _listen(self) -> None:
        headers = dict(self._headers)
        if self._allocator is not None:
            headers["Last-Event-ID"] = str(self._allocator.version)
        request = self._client.build_request(
            "GET", self._url, headers=headers, timeout=self._timeout
        )
        response = self._client.send(request, stream=True)
        self._response = response
        try:
            if response.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"{response.status_code} from {self._url}", request=request, response=response
                )
            self._note(connected=True, status="ok" if self._allocator else "starting")
            for event in _sse_events(response.iter_lines()):
                if event.event not in ("snapshot", "delta"):
                    continue
                if not self._apply(event.data):
                    raise _OutOfStep(f"delta to version {event.id} missed its base")
                self._backoff_now = self._backoff[0]
        finally:
            response.close()
            self._response = None

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._listen()
                error = "stream closed by the server"
            except (httpx.HTTPError, httpx.StreamError, _OutOfStep) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if self._closed.is_set():
                break
            self._note(
                connected=False,
                status="degraded" if self._allocator else "starting",
                reconnects=self._health.reconnects + 1,
                last_error=error,
            )
            wait = self._backoff_now * (0.5 + random.random() / 2)  # jitter spreads reconnections
            self._backoff_now = min(self._backoff[1], self._backoff_now * 2)
            self._closed.wait(wait)


class Refreshable(Protocol):
    """What :class:`BackgroundRefresh` drives: ``lifecycle.ExperimentService`` is one."""

    def refresh(self) -> bool:
        """Install the stored state's newer snapshot, if any; True when one was installed."""
        ...


class BackgroundRefresh:
    """Keeps an in-process allocator current from a background thread, not the serving ones.

    ``ExperimentService.refresh()`` reads the state version and, when another process changed
    the state (the CLI's kill, say), builds the new snapshot (incrementally: a kill recompiles
    the one experiment it stops) and swaps it into ``service.allocator()``. Called from a serving
    thread, that thread pays the rebuild; this calls it every ``interval_s`` on a daemon thread,
    so serving threads only ever read the allocator. A failed check (a busy store, or anything
    else) is shown in :attr:`last_error` and retried at the next tick; the thread never dies
    of it.

    Args:
        service: What to refresh (``ExperimentService``).
        interval_s: Seconds between two checks of the state version.
    """

    def __init__(self, service: Refreshable, interval_s: float = 0.05) -> None:
        if interval_s <= 0:
            raise ConfigError("interval_s", interval_s, "must be positive")
        self._service = service
        self._interval = interval_s
        self._closed = threading.Event()
        self.refreshed = 0
        """How many newer snapshots were installed."""
        self.last_error: str | None = None
        """The last retryable failure (None after a good check)."""
        self._thread = threading.Thread(target=self._run, name="vigil-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            try:
                self.refreshed += bool(self._service.refresh())
                self.last_error = None
            except Exception as exc:
                # A retryable failure (a busy store) clears at a later tick; anything else is
                # kept in last_error and retried too: a thread that died here would leave the
                # allocator serving its last snapshot, kills and all, without a word.
                self.last_error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Stop the thread (the allocator keeps serving what it last installed)."""
        self._closed.set()
        self._thread.join(5)

    def __enter__(self) -> BackgroundRefresh:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
