"""A scripted OpenAI-compatible chat server on loopback: replays replies, records requests.

Reusable by any test that drives the real ``openai`` client (retries, timeouts and all)::

    with ScriptedLLM([tool_call("fallback", {...}), diagnosis([...])]) as llm:
        settings = Settings(llm_base_url=llm.url, llm_model="scripted", ...)
        ...
        assert llm.requests[0]["messages"][0]["role"] == "system"

Each reply is served once, in order, to ``POST /v1/chat/completions``; a :class:`Reply` may set
an HTTP status (429, 500...), a delay (to provoke client timeouts), or a raw non-JSON body. When the
script runs out the server answers 500 ``script exhausted``, so a test never hangs on a missing
reply.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.agent.fakes import FakeToolbox, at, fail

__all__ = [
    "FALLBACK",
    "FALLBACK_ARGS",
    "TEXT_FORMS",
    "TOOL_PATH",
    "Reply",
    "ScriptedLLM",
    "completion",
    "diagnosis",
    "error",
    "fallback_world",
    "garbage",
    "slow",
    "text",
    "tool_call",
    "usage",
    "written_call",
]


@dataclass
class Reply:
    """One scripted HTTP reply."""

    body: dict[str, Any] | str
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    """A ``usage`` object; ``cached`` adds ``prompt_tokens_details.cached_tokens``."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def completion(
    message: dict[str, Any],
    *,
    tokens: int = 60,
    finish: str = "stop",
    used: dict[str, Any] | None = None,
) -> Reply:
    """A ``chat.completion`` with one choice; ``used`` replaces the default even ``usage``."""
    return Reply(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:10]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": used or usage(tokens // 2, tokens - tokens // 2),
        }
    )


def text(content: str, *, tokens: int = 60, used: dict[str, Any] | None = None) -> Reply:
    """An assistant message with text only."""
    return completion({"role": "assistant", "content": content}, tokens=tokens, used=used)


TEXT_FORMS = ("tool_call_tag", "tools_tag", "fenced", "bare", "list", "string_arguments")


def written_call(form: str, name: str, arguments: dict[str, Any]) -> Reply:
    """A tool call written in the reply text, in one of :data:`TEXT_FORMS` (as small models do).

    ``list`` writes two calls in a JSON list inside a ``<tool_call>`` tag (the second with an
    explicit ``model_id: null``, so it is a different call);
    ``string_arguments`` gives ``arguments`` as a JSON string in bare JSON.
    """
    call = {"name": name, "arguments": arguments}
    body = json.dumps(call)
    if form == "tool_call_tag":
        content = f"Let me check.\n<tool_call>\n{body}\n</tool_call>"
    elif form == "tools_tag":
        content = f"<tools>{body}</tools>"
    elif form == "fenced":
        content = f"I will call a tool:\n```json\n{body}\n```\nThen decide."
    elif form == "bare":
        content = f"Calling {name} now: {body} and waiting."
    elif form == "list":
        again = json.dumps({"name": name, "arguments": {**arguments, "model_id": None}})
        content = f"<tool_call>[{body}, {again}]</tool_call>"
    elif form == "string_arguments":
        content = json.dumps({"name": name, "arguments": json.dumps(arguments)})
    else:
        raise ValueError(f"unknown text form {form!r}; one of {TEXT_FORMS}")
    return text(content)


def tool_call(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    tokens: int = 60,
    used: dict[str, Any] | None = None,
) -> Reply:
    """An assistant message calling one tool."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            ],
        },
        tokens=tokens,
        finish="tool_calls",
        used=used,
    )


def diagnosis(
    causes: list[dict[str, Any]],
    summary: str = "",
    *,
    tokens: int = 60,
    used: dict[str, Any] | None = None,
) -> Reply:
    """A ``submit_diagnosis`` tool call."""
    args = {"causes": causes, "summary": summary}
    return tool_call("submit_diagnosis", args, tokens=tokens, used=used)


def error(status: int, message: str = "scripted error") -> Reply:
    """An API error (429, 500, 503...) in OpenAI's error shape."""
    return Reply({"error": {"message": message, "type": "scripted", "code": status}}, status)


def slow(seconds: float, reply: Reply | None = None) -> Reply:
    """A reply that arrives after ``seconds`` (a client with a shorter timeout gives up)."""
    base = reply or text("too late")
    return Reply(base.body, base.status, seconds, base.headers)


def garbage() -> Reply:
    """A 200 whose body is not JSON."""
    return Reply("<html>bad gateway, but 200</html>")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        owner = self.server.owner
        with owner.lock:
            owner.requests.append({"path": self.path, **body})
            owner.headers.append(dict(self.headers))
            reply = owner.script.popleft() if owner.script else error(500, "script exhausted")
        if reply.delay:
            time.sleep(reply.delay)
        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = payload.encode("utf-8")
        try:
            self.send_response(reply.status)
            is_json = not isinstance(reply.body, str)
            self.send_header("Content-Type", "application/json" if is_json else "text/html")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left; that is what a slow reply is for


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedLLM


class ScriptedLLM:
    """The server: start it (or use ``with``), point ``llm_base_url`` at :attr:`url`."""

    def __init__(self, replies: Iterable[Reply] = ()) -> None:
        self.script: deque[Reply] = deque(replies)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self.lock:
            self.script.extend(replies)

    @property
    def remaining(self) -> int:
        """Replies not served yet."""
        with self.lock:
            return len(self.script)

    def start(self) -> ScriptedLLM:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# The scripted server listens on loopback, which Vigil takes for a local model (no tools, a JSON
# answer); tests of the tool-calling path ask for it as a hosted endpoint gets it by default.
TOOL_PATH = {"llm_tools": "on", "llm_answer_format": "tool"}

# A fallback fault in the test arm of 879, and the cause a model should answer for it.
FALLBACK = {
    "cause": "model_fallback",
    "experiment": "879",
    "confidence": 0.9,
    "evidence": ["fallback"],
}
FALLBACK_ARGS = {"start": at(120).isoformat(), "end": at(158).isoformat(), "experiment_id": "879"}


def fallback_world() -> FakeToolbox:
    """Checks of a world whose only failure is 879's fallback."""
    return FakeToolbox(
        {
            "fallback@experiment:879": fail(
                "fallback", "Fallback rate 33% vs 0.4%.", experiment="879"
            )
        },
        onset=at(150),
    )
