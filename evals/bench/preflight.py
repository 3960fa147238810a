"""``vigil bench --only preflight``: replay throughput, the risk gating curve, preflight wall time.

1. **Replay throughput** — requests scored per second through the V2 client against a real
   Open Inference Protocol server on loopback (Seldon MLServer serving a scikit-learn logistic
   regression, from ``.venv-mlserver``: ``make mlserver``), beside the same model in process
   (scikit-learn ``predict_proba``) and the simulated world's runner.
2. **Risk gating curve** — share of incidents caught when gating the riskiest 5 / 10 / 50 % of
   changes, on the simulated launch history and on ApacheJIT 2019 (trained on 2017-2018), beside
   the plain logistic regression and the paper's curve (arXiv 2410.06351).
3. **Preflight wall time** — one experiment's preflight (validation, replay of 20,000 logged
   requests, resources, risk; no shadow run) in the simulated world, and what it decided for a
   healthy, a miscalibrated and a NaN-producing candidate, and for a healthy and a miscalibrated
   one in shadow mode (``broken_stopped``, ``healthy_passed``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from evals.bench import BenchOptions
from evals.launch_history import (
    HistoryResult,
    evaluate_apachejit,
    evaluate_history,
    simulate_launches,
)
from evals.replay import PREFLIGHT_SCENARIO, WorldRunner, preflight_world
from evals.sim import parse_scenario
from lifecycle.inference import OpenInferenceRunner, numeric_encoder
from lifecycle.preflight import Preflight

__all__ = ["PAPER", "MLServer", "mlserver", "run"]

PAPER = (0.187, 0.279, 0.846)
"""The diff risk score paper's logistic regression on Meta's diffs, caught at 5 / 10 / 50 %."""
MLSERVER_VENV = Path(__file__).resolve().parents[2] / ".venv-mlserver"

_TRAIN = """
import json, pathlib, sys
import joblib, numpy as np
from sklearn.linear_model import LogisticRegression
root = pathlib.Path(sys.argv[1]); ports = [int(p) for p in sys.argv[2:5]]
rng = np.random.default_rng(7)
X = rng.normal(size=(3000, 3))
y = (rng.random(3000) < 1 / (1 + np.exp(-(X @ [1.0, -0.5, 0.2] - 3)))).astype(int)
m = LogisticRegression().fit(X, y)
(root / "ctr").mkdir(parents=True, exist_ok=True)
joblib.dump(m, root / "ctr" / "model.joblib")
(root / "ctr" / "model-settings.json").write_text(json.dumps({
    "name": "ctr", "implementation": "mlserver_sklearn.SKLearnModel",
    "parameters": {"uri": "./model.joblib", "version": "1"}}))
(root / "settings.json").write_text(json.dumps({
    "host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1],
    "metrics_port": ports[2], "parallel_workers": 0}))
# A pCTR model on the logit of a logged prediction (coefficient ~1): production and a candidate.
p = np.clip(np.exp(rng.normal(np.log(0.02), 0.8, 20000)), 1e-4, 0.5)
z = np.log(p / (1 - p))[:, None]
for name in ("ctr_reference", "ctr_candidate"):
    r = LogisticRegression().fit(z, (rng.random(p.size) < p).astype(int))
    (root / name).mkdir(exist_ok=True)
    joblib.dump(r, root / name / "model.joblib")
    (root / name / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"}}))
print(json.dumps({"coef": m.coef_[0].tolist(), "intercept": float(m.intercept_[0])}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MLServer:
    """A running MLServer on loopback and the coefficients of the model ``ctr`` it serves."""

    url: str
    coef: np.ndarray
    intercept: float

    def expected(self, x: np.ndarray) -> np.ndarray:
        """What the served logistic regression answers for features ``x``."""
        return np.asarray(1 / (1 + np.exp(-(x @ self.coef + self.intercept))))


@contextmanager
def mlserver(
    directory: Path, venv: Path = MLSERVER_VENV, timeout: float = 90.0
) -> Iterator[MLServer]:
    """Train a small scikit-learn model in the server's venv and serve it with MLServer.

    Raises:
        FileNotFoundError: The venv is missing (``make mlserver`` builds it).
        TimeoutError: The server did not become ready in ``timeout`` seconds.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python}: the V2 server's venv is missing; run `make mlserver`")
    ports = [_free_port() for _ in range(3)]
    trained = subprocess.run(
        [str(python), "-c", _TRAIN, str(directory), *map(str, ports)],
        check=True,
        capture_output=True,
        text=True,
    )
    model = json.loads(trained.stdout.strip().splitlines()[-1])
    with (directory / "mlserver.log").open("w") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{ports[0]}"
        try:
            deadline = time.monotonic() + timeout
            with OpenInferenceRunner(url, numeric_encoder(["x"])) as probe:
                while not probe.ready():
                    if proc.poll() is not None:
                        tail = (directory / "mlserver.log").read_text()[-2000:]
                        raise RuntimeError(f"MLServer exited: {tail}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"MLServer was not ready in {timeout:g} s")
                    time.sleep(0.3)
            yield MLServer(url, np.asarray(model["coef"]), float(model["intercept"]))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _throughput(server: MLServer, n: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2]})
    enc = numeric_encoder(["f1", "f2", "f3"])
    with OpenInferenceRunner(server.url, enc, batch_size=1024) as runner:
        runner.score("ctr", None, frame.head(64))  # warm the connection and the runtime
        v2 = runner.score("ctr", None, frame)
    err = float(np.max(np.abs(v2.predictions - server.expected(x.astype(np.float32)))))
    local = LogisticRegression().fit(x[:2000], (x[:2000, 0] > 1).astype(int))
    in_process = min(_timed(lambda: local.predict_proba(x)) for _ in range(3))  # best of 3
    world = WorldRunner(parse_scenario(PREFLIGHT_SCENARIO))
    logged = pd.DataFrame(
        {"request_id": np.arange(n), "prediction": np.full(n, 0.02), "ts": pd.Timestamp(0)}
    )
    sim = min((world.score("ctr_v43", None, logged) for _ in range(3)), key=lambda r: r.seconds)
    return {
        "requests": n,
        "v2_batch_size": 1024,
        "v2_requests_per_s": n / v2.seconds,
        "in_process_requests_per_s": n / in_process,
        "in_process_over_v2": (n / in_process) / (n / v2.seconds),
        "world_runner_requests_per_s": n / sim.seconds,
        "v2_max_abs_error_vs_model": err,
    }


def _timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _logit_of_prediction(requests: pd.DataFrame) -> npt.NDArray[np.float32]:
    p = np.clip(requests["prediction"].to_numpy(dtype=float, na_value=np.nan), 1e-6, 1 - 1e-6)
    out: npt.NDArray[np.float32] = np.log(p / (1 - p)).astype(np.float32)[:, None]
    return out


def _curve(result: HistoryResult) -> dict[str, Any]:
    return {
        "chosen": result.chosen,
        "cv_mean_caught": result.cv,
        "train": result.train,
        "test": result.model.changes,
        "test_incidents": result.model.incidents,
        "caught": dict(zip(("5%", "10%", "50%"), result.model.caught, strict=True)),
        "auc": result.model.auc,
        "plain_lr_caught": dict(zip(("5%", "10%", "50%"), result.plain.caught, strict=True)),
        "plain_lr_auc": result.plain.auc,
        "paper_caught": dict(zip(("5%", "10%", "50%"), PAPER, strict=True)),
        "above_plain_at_every_gate": all(
            m > p for m, p in zip(result.model.caught, result.plain.caught, strict=True)
        ),
    }


def _preflight_world(opts: BenchOptions, server: MLServer) -> dict[str, Any]:
    scenario = parse_scenario(PREFLIGHT_SCENARIO)
    world = preflight_world(scenario, opts.workdir / "preflight-world")
    history = simulate_launches(3000, seed=0)
    _, risk = evaluate_history(history)
    now = (scenario.start + timedelta(minutes=scenario.world.minutes)).astimezone(UTC)
    pre = Preflight(
        world.service,
        runner=world.runner,
        requests=world.reader,
        shadow=world.shadow,
        risk=risk,
        clock=lambda: now,
    )
    out: dict[str, Any] = {"replayed_requests": 20_000}
    try:
        for exp in ("900", "901", "902", "903", "904"):  # 903, 904: shadow runs
            began = time.perf_counter()
            report = pre.run(exp)
            out[exp] = {
                "candidate": next(iter(report.candidates.values()), None),
                "decision": report.decision,
                "zone": report.zone,
                "failed_steps": [s.name for s in report.failed],
                "shadow": any(s.name == "shadow" for s in report.steps),
                "seconds": time.perf_counter() - began,
            }
        # The same preflight with both models behind the V2 server on loopback.
        names = {"ctr_v41": "ctr_reference"}
        v2 = OpenInferenceRunner(
            server.url,
            _logit_of_prediction,
            model_name=lambda model, version: names.get(model, "ctr_candidate"),
        )
        with v2:
            over_v2 = Preflight(
                world.service, runner=v2, requests=world.reader, risk=risk, clock=lambda: now
            )
            began = time.perf_counter()
            report = over_v2.run("900")
            out["v2_wall_seconds_one_experiment"] = time.perf_counter() - began
            out["v2_decision_900"] = report.decision
    finally:
        world.close()
    out["wall_seconds_one_experiment"] = out["901"]["seconds"]  # shadow excluded
    broken, healthy = ("901", "902", "904"), ("900", "903")
    out["broken_stopped"] = sum(out[e]["decision"] == "refused" for e in broken) / len(broken)
    out["healthy_passed"] = sum(out[e]["decision"] != "refused" for e in healthy) / len(healthy)
    out["goal_seconds"] = 10.0
    return out


def run(opts: BenchOptions) -> dict[str, Any]:
    """Replay throughput, the gating curves and the preflight's wall time."""
    n = 5_000 if opts.quick else 20_000
    apachejit = opts.shared_data / "apachejit"
    directory = opts.workdir / "mlserver"
    directory.mkdir(parents=True, exist_ok=True)
    with mlserver(directory) as server:
        throughput = _throughput(server, n)
        preflight = _preflight_world(opts, server)
    return {
        "replay_throughput": throughput,
        "risk_simulated": _curve(evaluate_history(simulate_launches(6000, seed=0))[0]),
        "risk_apachejit": _curve(evaluate_apachejit(apachejit)),
        "preflight": preflight,
    }
