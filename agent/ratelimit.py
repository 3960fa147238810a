"""A per-user rate of starting work, shared by the front doors (HTTP and Slack).

:class:`RateLimiter` is a sliding-window counter per key (the user): one user cannot fill the
investigation queue through either door. A caller over the rate gets :class:`RateLimited`, a
retryable error that says when to try again (HTTP 429 with Retry-After).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from tools.errors import RetryableError

__all__ = ["RateLimited", "RateLimiter"]


class RateLimited(RetryableError):
    """A caller over their rate limit (HTTP 429, with Retry-After).

    Args:
        message: Who is limited and how.
        retry_after_s: Seconds until the next call may succeed.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RateLimiter:
    """At most ``limit`` events per ``window_s`` seconds per key (a sliding window).

    Args:
        limit: Events allowed per window.
        window_s: The window's length in seconds.
        what: What is counted, for the refusal's message (e.g. "investigations").
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        what: str = "requests",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"limit must be >= 1 and window_s > 0, got {limit}, {window_s}")
        self.limit = limit
        self.window_s = window_s
        self._what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, deque[float]] = {}

    def acquire(self, key: str) -> None:
        """Count one event for ``key``.

        Raises:
            RateLimited: ``key`` already had ``limit`` events in the window (nothing counted).
        """
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                wait = events[0] + self.window_s - now
                raise RateLimited(
                    f"{key} started {self.limit} {self._what} in the last "
                    f"{self.window_s:g} s; try again in {wait:.0f} s",
                    retry_after_s=wait,
                )
            events.append(now)

    def release(self, key: str) -> None:
        """Give back the last event of ``key`` (the work it counted was refused)."""
        with self._lock:
            events = self._events.get(key)
            if events:
                events.pop()
