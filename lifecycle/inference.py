"""The ``ModelRunner`` port: score logged requests with a model version, and its V2 REST client.

A preflight replays a sample of production's logged requests through the candidate model and the
production model (:mod:`lifecycle.preflight`). What does the scoring is a :class:`ModelRunner`:

- :class:`OpenInferenceRunner`, a client of the Open Inference Protocol (the "V2" REST API that
  KServe, Seldon MLServer and Triton serve): ``GET /v2/health/ready``, ``GET /v2/models/{name}``
  (metadata) and ``POST /v2/models/{name}/infer``;
- the simulated world's models (``evals.replay.WorldRunner``), for the scenario suite.

Both return :class:`Scored`: one prediction and one latency per request, in the order given.
:class:`ShadowLog` reads what a shadow run logged (the optional ``shadow_predictions`` table)
beside the served predictions, one sample per candidate arm, for the preflight's shadow step.
Requests go over the wire as one FP32 tensor ``[n, k]`` built by a :data:`FeatureEncoder` from
the logged columns; what a model needs as input is the deployment's business, so the encoder is
a parameter (:func:`numeric_encoder` picks numeric columns as they are).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa

from tools.checks.replay import ReplaySample
from tools.errors import (
    ConfigError,
    RetryableError,
    TerminalError,
)
from tools.telemetry import READ_ERRORS, read_failed
from tools.vocabulary import as_utc, naive_utc

__all__ = [
    "FeatureEncoder",
    "InferenceError",
    "InferenceUnavailable",
    "ModelRunner",
    "OpenInferenceRunner",
    "Scored",
    "ShadowLog",
    "numeric_encoder",
]

F64 = npt.NDArray[np.float64]
FeatureEncoder = Callable[[pd.DataFrame], npt.NDArray[np.float32]]
"""Logged requests -> the model's input tensor ``[n, k]`` (float32)."""


class InferenceUnavailable(RetryableError):
    """The inference server could not be reached, timed out, was not ready or answered 5xx."""


class InferenceError(TerminalError):
    """The inference server refused the request (4xx: unknown model, bad input) or answered with
    something that is not a prediction per request; asking again fails again."""


@dataclass(frozen=True)
class Scored:
    """What a runner answered for a batch of requests.

    Attributes:
        predictions: One pCTR per request, in request order (NaN where the model gave none).
        latency_ms: Time spent scoring per request, in milliseconds (a batch's time spread over
            its requests).
        seconds: Wall time of the whole call.
    """

    predictions: F64
    latency_ms: F64
    seconds: float

    def __post_init__(self) -> None:
        if self.predictions.shape != self.latency_ms.shape:
            raise InferenceError(
                f"{self.predictions.shape[0]} predictions for {self.latency_ms.shape[0]} latencies"
            )


@runtime_checkable
class ModelRunner(Protocol):
    """Scores logged requests with a given model version."""

    def score(self, model_id: str, version: str | None, requests: pd.DataFrame) -> Scored:
        """Score ``requests`` (rows of the ``requests`` telemetry table) with a model version.

        Args:
            model_id: The model's id in the registry.
            version: Its version (None: whatever the runner serves as current).
            requests: Logged requests; the runner reads the columns its model needs.

        Returns:
            One prediction and one latency per request, in order.
        """
        ...


def numeric_encoder(columns: Sequence[str]) -> FeatureEncoder:
    """An encoder that sends ``columns`` of the logged requests as they are (float32).

    Raises:
        ConfigError: At encoding time, a column the requests do not have.
    """
    cols = list(columns)

    def encode(requests: pd.DataFrame) -> npt.NDArray[np.float32]:
        missing = [c for c in cols if c not in requests.columns]
        if missing:
            raise ConfigError(
                "inference_features",
                missing,
                f"not columns of the logged requests {list(requests.columns)}",
            )
        return requests[cols].to_numpy(dtype=np.float32, na_value=np.nan)

    return encode


def _default_name(model_id: str, version: str | None) -> str:
    return model_id


class OpenInferenceRunner:
    """A :class:`ModelRunner` over the Open Inference Protocol (V2) REST API.

    Args:
        base_url: The server's root, e.g. ``http://127.0.0.1:8080``.
        encoder: Logged requests -> input tensor.
        model_name: ``(model_id, version) -> the served model's name`` (default: the model id).
        output: Name of the output to ask for (``predict_proba`` for a scikit-learn classifier
            on MLServer; None: the server's default). A ``[n, 2]`` output gives column 1.
        batch_size: Requests per ``infer`` call.
        timeout: Seconds per HTTP call (connect, read and write).
        client: An ``httpx.Client`` to use (tests, connection pooling); one is made otherwise.
    """

    def __init__(
        self,
        base_url: str,
        encoder: FeatureEncoder,
        *,
        model_name: Callable[[str, str | None], str] = _default_name,
        output: str | None = "predict_proba",
        batch_size: int = 1024,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError("inference_batch_size", batch_size, "must be positive")
        if timeout <= 0:
            raise ConfigError("inference_timeout_seconds", timeout, "must be positive")
        self._base = base_url.rstrip("/")
        self._encoder = encoder
        self._model_name = model_name
        self._output = output
        self._batch = batch_size
        self._client = client or httpx.Client(timeout=timeout)
        self._owned = client is None

    def close(self) -> None:
        """Close the HTTP client (when this runner made it)."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> OpenInferenceRunner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        url = f"{self._base}{path}"
        try:
            response = self._client.request(method, url, json=body)
        except httpx.TimeoutException as exc:
            raise InferenceUnavailable(f"{method} {url} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise InferenceUnavailable(f"{method} {url} could not be reached: {exc}") from exc
        if response.status_code >= 500:
            raise InferenceUnavailable(
                f"{method} {url} answered {response.status_code}: {_text(response)}"
            )
        if response.status_code >= 400:
            raise InferenceError(
                f"{method} {url} answered {response.status_code}: {_text(response)}"
            )
        return response

    def ready(self) -> bool:
        """True when the server says it is ready (``GET /v2/health/ready`` answers 200)."""
        try:
            return self._call("GET", "/v2/health/ready").status_code == 200
        except InferenceUnavailable:
            return False

    def metadata(self, model_id: str, version: str | None = None) -> dict[str, Any]:
        """The served model's metadata (``GET /v2/models/{name}``): name, platform, inputs...

        Raises:
            InferenceError: The server does not know the model.
            InferenceUnavailable: The server could not be reached.
        """
        name = self._model_name(model_id, version)
        out: dict[str, Any] = self._call("GET", f"/v2/models/{name}").json()
        return out

    def score(self, model_id: str, version: str | None, requests: pd.DataFrame) -> Scored:
        """Score ``requests`` in batches through ``POST /v2/models/{name}/infer``.

        Raises:
            InferenceError: The server refused a batch or answered the wrong number of outputs.
            InferenceUnavailable: The server could not be reached or failed (5xx, timeout).
        """
        name = self._model_name(model_id, version)
        features = self._encoder(requests)
        n = features.shape[0]
        preds = np.full(n, np.nan)
        latency = np.zeros(n)
        began = time.perf_counter()
        for lo in range(0, n, self._batch):
            chunk = features[lo : lo + self._batch]
            body: dict[str, Any] = {
                "id": f"vigil-replay-{lo}",
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": list(chunk.shape),
                        "datatype": "FP32",
                        "data": np.nan_to_num(chunk, nan=0.0).ravel().tolist(),
                    }
                ],
            }
            if self._output is not None:
                body["outputs"] = [{"name": self._output}]
            t0 = time.perf_counter()
            answer = self._call("POST", f"/v2/models/{name}/infer", body).json()
            spent = (time.perf_counter() - t0) * 1000.0
            preds[lo : lo + len(chunk)] = _predictions(answer, len(chunk), name)
            latency[lo : lo + len(chunk)] = spent / len(chunk)
        return Scored(preds, latency, time.perf_counter() - began)


def _text(response: httpx.Response) -> str:
    return response.text[:300]


def _predictions(answer: Mapping[str, Any], n: int, name: str) -> F64:
    """The positive-class probability per request of a V2 ``infer`` answer."""
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        raise InferenceError(f"model {name!r} answered no outputs")
    out = outputs[0]
    shape = [int(s) for s in out.get("shape", [])]
    data = np.asarray(out.get("data", []), dtype=np.float64)
    if not shape or shape[0] != n or data.size != int(np.prod(shape)):
        raise InferenceError(f"model {name!r} answered shape {shape} for {n} requests")
    values = data.reshape(shape)
    if values.ndim == 1:
        return values
    if values.ndim == 2 and values.shape[1] == 2:
        return values[:, 1].copy()  # a classifier's [P(0), P(1)]
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0].copy()
    raise InferenceError(f"model {name!r} answered shape {shape}; expected [n], [n, 1] or [n, 2]")


class ShadowLog:
    """Shadow predictions (the optional ``shadow_predictions`` table) beside the served ones.

    The table (docs/telemetry.md): ``ts, request_id, experiment_id, arm, model_id, model_version,
    prediction, latency_ms``, one row per request a candidate scored in shadow. It is joined to
    ``requests`` by ``request_id`` for the served prediction, its latency and the click.

    Args:
        engine: The telemetry warehouse (an engine or a SQLAlchemy URL).
        table: The shadow table's name.
        requests: The requests table's name.
    """

    def __init__(
        self,
        engine: sa.Engine | str,
        *,
        table: str = "shadow_predictions",
        requests: str = "requests",
    ) -> None:
        self._engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        self._table = table
        self._requests = requests

    def shadow_samples(
        self, experiment_id: str, start: datetime, end: datetime
    ) -> list[ReplaySample]:
        """The experiment's shadow predictions in ``[start, end)`` paired with the served ones,
        one sample per candidate arm (in arm order), so each candidate is judged on its own.

        Returns:
            Empty when there is no shadow table or no shadow row for the experiment.

        Raises:
            TelemetryUnavailable: The warehouse could not be reached.
            TelemetryQueryError: The warehouse could not answer the query.
        """
        try:
            return self._read(experiment_id, start, end)
        except READ_ERRORS as exc:
            raise read_failed(exc)(f"shadow predictions could not be read: {exc}") from exc

    def _read(self, experiment_id: str, start: datetime, end: datetime) -> list[ReplaySample]:
        if not sa.inspect(self._engine).has_table(self._table):
            return []
        s = sa.table(
            self._table,
            *(
                sa.column(c)
                for c in ("ts", "request_id", "experiment_id", "arm", "prediction", "latency_ms")
            ),
        )
        r = sa.table(
            self._requests,
            *(sa.column(c) for c in ("request_id", "prediction", "label", "latency_ms")),
        )
        lo, hi = (naive_utc(as_utc(t)) for t in (start, end))
        query = (
            sa.select(
                s.c.arm,
                s.c.prediction.label("shadow"),
                s.c.latency_ms.label("shadow_ms"),
                r.c.prediction.label("served"),
                r.c.label,
                r.c.latency_ms.label("served_ms"),
            )
            .join(r, r.c.request_id == s.c.request_id)
            .where(s.c.experiment_id == experiment_id, s.c.ts >= lo, s.c.ts < hi)
        )
        with self._engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).mappings().all())
        if frame.empty:
            return []
        return [
            ReplaySample(
                rows["shadow"].to_numpy(dtype=float, na_value=np.nan),
                rows["served"].to_numpy(dtype=float, na_value=np.nan),
                rows["label"].to_numpy(dtype=float),
                rows["shadow_ms"].to_numpy(dtype=float, na_value=np.nan),
                rows["served_ms"].to_numpy(dtype=float, na_value=np.nan),
                source="shadow",
                experiment=experiment_id,
                arm=str(arm),
            )
            for arm, rows in frame.groupby("arm", sort=True)
        ]
