"""The V2 (Open Inference Protocol) client against a real server on loopback: Seldon MLServer
serving a scikit-learn logistic regression, started from its own venv (``make mlserver``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from evals.bench.preflight import MLServer, mlserver
from lifecycle.inference import (
    InferenceError,
    InferenceUnavailable,
    ModelRunner,
    OpenInferenceRunner,
    numeric_encoder,
)


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    with mlserver(Path(tmp_path_factory.mktemp("mlserver"))) as server:
        yield server


def _requests(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"request_id": range(n), "f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2]})


def test_scores_match_the_served_model(v2_server: MLServer) -> None:
    frame = _requests(300)
    with OpenInferenceRunner(
        v2_server.url, numeric_encoder(["f1", "f2", "f3"]), batch_size=64
    ) as runner:
        assert isinstance(runner, ModelRunner)
        assert runner.ready()
        assert runner.metadata("ctr")["name"] == "ctr"
        scored = runner.score("ctr", "1", frame)
    expected = v2_server.expected(frame[["f1", "f2", "f3"]].to_numpy(np.float32))
    np.testing.assert_allclose(scored.predictions, expected, atol=1e-5)
    assert scored.latency_ms.shape == (300,)
    assert (scored.latency_ms > 0).all()
    assert scored.seconds > 0


def test_batch_size_does_not_change_the_answers(v2_server: MLServer) -> None:
    frame = _requests(50, seed=3)
    enc = numeric_encoder(["f1", "f2", "f3"])
    with OpenInferenceRunner(v2_server.url, enc, batch_size=7) as small:
        a = small.score("ctr", None, frame)
    with OpenInferenceRunner(v2_server.url, enc, batch_size=1000) as big:
        b = big.score("ctr", None, frame)
    np.testing.assert_allclose(a.predictions, b.predictions, atol=1e-9)


def test_unknown_model_is_a_terminal_error(v2_server: MLServer) -> None:
    with OpenInferenceRunner(v2_server.url, numeric_encoder(["f1", "f2", "f3"])) as runner:
        with pytest.raises(InferenceError, match="nope"):
            runner.score("nope", None, _requests(5))
        with pytest.raises(InferenceError):
            runner.metadata("nope")


def test_missing_feature_column_names_it() -> None:
    with pytest.raises(Exception, match="inference_features"):
        numeric_encoder(["f9"])(_requests(3))


def test_closed_port_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with OpenInferenceRunner(url, numeric_encoder(["f1"]), timeout=2) as runner:
        assert not runner.ready()
        with pytest.raises(InferenceUnavailable):
            runner.score("ctr", None, _requests(3))


class _Scripted(BaseHTTPRequestHandler):
    mode = "500"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        if self.mode == "slow":
            time.sleep(1.5)
        if self.mode == "500":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        body = json.dumps({"outputs": [{"name": "p", "shape": [1], "data": [0.5]}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("mode", "error"),
    [("500", InferenceUnavailable), ("shape", InferenceError), ("slow", InferenceUnavailable)],
)
def test_server_faults_map_to_the_error_hierarchy(mode: str, error: type[Exception]) -> None:
    handler = type("H", (_Scripted,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = httpx.Client(timeout=0.5)
        runner = OpenInferenceRunner(url, numeric_encoder(["f1"]), client=client)
        with pytest.raises(error):
            runner.score("ctr", None, _requests(4))  # 4 requests, 1 prediction for "shape"
        client.close()
    finally:
        server.shutdown()
        server.server_close()
