"""A real uvicorn server on a loopback port, in a thread, for tests that need HTTP for real."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn


class LoopbackServer:
    """Serve ``app`` on 127.0.0.1 (a free port, or ``port`` again to test a restart).

    Args:
        app: The ASGI app.
        port: 0 for a free port.
        lifespan: Whether the app's start-up and shutdown run.
        force_exit: Stop without waiting for open connections (event streams).
    """

    def __init__(
        self,
        app: Any,
        port: int = 0,
        *,
        lifespan: Literal["on", "off"] = "on",
        force_exit: bool = False,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._force_exit = force_exit
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self._server.started, "the loopback server did not start within 10 s"
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._server.force_exit = self._force_exit
        self._thread.join(10)
        self._sock.close()
