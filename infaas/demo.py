"""`make demo`: build the example zoo, serve it on the embedded default, query it, summarise, stop.

Everything goes through the same public surfaces a user would use: the `infaas serve` process and its
HTTP API (registration, variant listing, `/v1/infer`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from infaas.config import get_settings

out = Console(width=150)

# (latency budget ms, accuracy floor): chosen so that different budgets pick different models.
SAMPLE_QUERIES = [(1.0, 0.0), (2.0, 0.9), (20.0, 0.95), (20.0, 0.0), (50.0, 0.97)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int) -> list[str]:
    """``infaas serve`` on this interpreter, through ``python -m infaas`` (the console script's entry).

    Not ``python -m infaas.cli.main``: ``infaas.cli`` imports that module, so running it as ``__main__``
    executes it a second time and Python warns about it.
    """
    return [sys.executable, "-m", "infaas", "serve", "--port", str(port)]


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("infaas serve exited during start-up")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("infaas serve did not come up")


def _register_zoo(http: httpx.Client, zoo: list[dict]) -> None:
    for model in zoo:
        if http.get(f"/v1/models/{model['name']}").status_code == 200:
            continue
        with open(model["onnx_path"], "rb") as onnx_file, open(model["validation_path"], "rb") as val_file:
            response = http.post(
                "/v1/models",
                data={"name": model["name"], "task": model["task"], "max_batch": "16"},
                files={"model": ("model.onnx", onnx_file), "validation": ("val.npz", val_file)},
            )
        response.raise_for_status()
        out.print(f"registered {model['name']}")


def _wait_for_variants(http: httpx.Client, names: list[str], timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            model = http.get(f"/v1/models/{name}").json()
            if model["status"] in {"ready", "failed"}:
                counts = model["variant_counts"]
                out.print(
                    f"{name}: {model['status']} — {counts['ready']} ready, {counts['skipped']} skipped, "
                    f"{counts['failed']} failed"
                )
                pending.discard(name)
        time.sleep(1.0)


def _variant_table(http: httpx.Client, names: list[str]) -> Table:
    table = Table("model", "variant", "status", "p50 ms @1", "thr/s @max", "accuracy", title="variants (measured)")
    for name in names:
        for variant in http.get(f"/v1/models/{name}/variants").json():
            profiles = variant["profiles"]
            if profiles:
                table.add_row(
                    name,
                    variant["name"],
                    variant["status"],
                    f"{profiles[0]['latency_p50_ms']:.3f}",
                    f"{profiles[-1]['throughput_per_s']:.0f}",
                    f"{variant['accuracy']:.3f}",
                )
            else:
                table.add_row(name, variant["name"], variant["status"], "", "", (variant["reason"] or "")[:50])
    return table


def _query_table(http: httpx.Client, zoo: list[dict]) -> Table:
    validation = np.load(zoo[0]["validation_path"])
    sample = validation["inputs"][:1]
    label = int(validation["labels"][0])
    table = Table(
        "latency_ms",
        "min_accuracy",
        "served by",
        "est ms",
        "actual ms",
        "predicted",
        "label",
        title=f"task queries ({zoo[0]['task']})",
    )
    for latency_ms, min_accuracy in SAMPLE_QUERIES:
        response = http.post(
            "/v1/infer",
            json={
                "task": zoo[0]["task"],
                "inputs": {zoo[0]["input_name"]: sample.tolist()},
                "latency_ms": latency_ms,
                "min_accuracy": min_accuracy,
            },
        )
        if response.status_code != 200:
            table.add_row(
                str(latency_ms),
                str(min_accuracy),
                f"HTTP {response.status_code}: {response.json().get('detail')}",
                "",
                "",
                "",
                str(label),
            )
            continue
        body = response.json()
        served = body["served_by"]
        logits = np.asarray(next(iter(body["outputs"].values())))
        flag = " (SLO at risk)" if served["slo_at_risk"] else ""
        table.add_row(
            str(latency_ms),
            str(min_accuracy),
            f"{served['model']}/{served['variant']}{flag}",
            f"{served['estimated_ms']:.2f}",
            f"{served['actual_ms']:.2f}",
            str(int(logits.argmax())),
            str(label),
        )
    return table


def main() -> None:
    """Run the whole demo; the server is stopped whatever happens."""
    settings = get_settings()
    settings.ensure_home()
    zoo_dir = settings.home / "zoo"
    zoo_file = zoo_dir / "zoo.json"
    if not zoo_file.exists():
        out.print("building the example zoo (trains small classifiers on scikit-learn's digits)…")
        subprocess.run([sys.executable, "-m", "infaas.examples", "--out", str(zoo_dir)], check=True)
    zoo = json.loads(zoo_file.read_text())

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INFAAS_HOME": str(settings.home), "INFAAS_PORT": str(port)}
    server = subprocess.Popen(server_command(port), env=env)
    try:
        _wait_until_up(url, server)
        out.print(f"infaas serving on {url} (home {settings.home})")
        with httpx.Client(base_url=url, timeout=120) as http:
            _register_zoo(http, zoo)
            names = [m["name"] for m in zoo]
            _wait_for_variants(http, names)
            out.print(_variant_table(http, names))
            out.print(_query_table(http, zoo))
    finally:
        server.terminate()
        server.wait(timeout=30)
        out.print("server stopped")


if __name__ == "__main__":
    main()
