"""A real Prometheus (Debian's ``prometheus``, ``make browser`` installs it) scrapes a live infaas every second;
known traffic is sent, and PromQL over Prometheus's HTTP API must give back what was sent: the request count and
rate, the SLO misses, and a latency quantile in the bucket the true quantile lies in. The Grafana dashboard's
expressions must evaluate there too."""

from __future__ import annotations

import bisect
import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from api.app import create_app
from infaas.config import Settings
from infaas.metrics import LATENCY_BUCKETS
from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model, wait_for
from tests.s3server import free_port

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "infaas-dashboard.json"
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (make browser)")

IN, OUT = 4, 3
FP32 = profiles({b: 0.1 * b for b in (1, 4, 16)}, p99_factor=2.0, memory_mb=20.0)
OK, AT_RISK = 60, 20  # queries within a generous budget, and queries with a budget no placement can meet
PACE_PER_S = 20.0


@pytest.fixture()
def infaas_url(tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings(home=tmp_path / "home", autoscaler="off"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive(), 20, interval_s=0.02), "uvicorn did not start"
    services: Services = app.state.services
    seed_model(services, "tiny", linear_model(IN, OUT), task="tiny-task", variants={"fp32": FP32})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def prometheus(tmp_path: Path, infaas_url: str) -> Iterator[httpx.Client]:
    """Prometheus on a free loopback port scraping ``infaas_url`` every second, with its data in ``tmp_path``."""
    config = tmp_path / "prometheus.yml"
    target = infaas_url.removeprefix("http://")
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "infaas", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:

        def ready() -> bool:
            try:
                return client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        assert wait_for(ready, 30, interval_s=0.1) and proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(prom: httpx.Client, promql: str, at: float | None = None) -> list[dict]:
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
    body = prom.get("/api/v1/query", params=params).json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def scalar(prom: httpx.Client, promql: str, at: float | None = None) -> float:
    result = query(prom, promql, at)
    assert len(result) == 1, (promql, result)
    return float(result[0]["value"][1])


def bucket_of(seconds: float) -> tuple[float, float]:
    """The histogram bucket ``(lower, upper]`` an observation falls in."""
    i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
    return (LATENCY_BUCKETS[i - 1] if i else 0.0, LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else math.inf)


def test_prometheus_reads_back_the_traffic_sent(infaas_url: str, prometheus: httpx.Client) -> None:
    assert wait_for(lambda: query(prometheus, 'up{job="infaas"} == 1'), 20, interval_s=0.2), "never scraped"
    x = np.random.default_rng(0).standard_normal((1, IN)).astype(np.float32).tolist()
    actual_s: list[float] = []
    answered: list[float] = []  # when each answer arrived
    with httpx.Client(base_url=infaas_url, timeout=30.0) as api:
        started = time.time()
        for i in range(OK + AT_RISK):
            time.sleep(max(0.0, started + i / PACE_PER_S - time.time()))  # paced: a known rate
            budget = 10_000 if i % 4 else 0.001  # every fourth one cannot be met: served at risk, a miss
            body = {"model": "tiny", "inputs": {"x": x}, "latency_ms": budget}
            response = api.post("/v1/infer", json=body)
            assert response.status_code == 200, response.text
            served = response.json()["served_by"]
            assert served["slo_at_risk"] == (budget < 1)
            actual_s.append(served["actual_ms"] / 1000.0)
            answered.append(time.time())
        ended = time.time()
    sent = OK + AT_RISK
    assert wait_for(lambda: query(prometheus, f"sum(infaas_requests_total) == {sent}"), 20, interval_s=0.2), query(
        prometheus, "infaas_requests_total"
    )

    assert scalar(prometheus, 'sum(infaas_requests_total{outcome="ok", endpoint="v1"})') == OK
    assert scalar(prometheus, 'sum(infaas_requests_total{outcome="slo_at_risk"})') == AT_RISK
    assert scalar(prometheus, "sum(infaas_slo_misses_total)") == AT_RISK
    assert scalar(prometheus, 'sum(infaas_request_duration_seconds_count{model="tiny", variant="fp32"})') == sent

    # The rate over a window inside the traffic: the answers that arrived in that window, per second (Prometheus
    # extrapolates from the 1 s scrapes within it, hence the tolerance).
    window_s = 4
    at = (started + ended) / 2 + window_s / 2
    rate = scalar(prometheus, f"sum(rate(infaas_requests_total[{window_s}s]))", at=at)
    sent_rate = sum(1 for t in answered if at - window_s < t <= at) / window_s
    assert sent_rate > 0.5 * PACE_PER_S, (sent_rate, "the traffic did not keep its pace")
    assert rate == pytest.approx(sent_rate, rel=0.35), (rate, sent_rate)

    # Quantiles: Prometheus interpolates inside the bucket the true quantile's observation fell in.
    ordered = sorted(actual_s)
    for q in (0.5, 0.99):
        estimate = scalar(prometheus, f"histogram_quantile({q}, sum by (le) (infaas_request_duration_seconds_bucket))")
        true = ordered[math.ceil(q * len(ordered)) - 1]
        low, high = bucket_of(true)
        assert low <= estimate <= high, (q, estimate, true, (low, high))


def test_every_dashboard_expression_evaluates_in_prometheus(infaas_url: str, prometheus: httpx.Client) -> None:
    assert wait_for(lambda: query(prometheus, 'up{job="infaas"} == 1'), 20, interval_s=0.2), "never scraped"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    expressions = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert expressions
    for expr in expressions:
        query(prometheus, expr.replace("$__rate_interval", "1m"))  # status success: it parses and evaluates
