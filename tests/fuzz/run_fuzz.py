"""The long hostile-input run: schemathesis with a large example budget (undocumented status codes checked
too), many random and adversarial ONNX uploads, then the hostile-tenant suite (issue 14: cross-site and
DNS-rebinding requests, reserved tenants, hidden names, names, shapes and values that were 500s, forwarded
headers); prints operations, cases and failures.

    .venv/bin/python -m tests.fuzz.run_fuzz [--examples 200] [--uploads 300] [--hostile-rounds 50]

Exit status 1 when anything failed. ``make test`` runs the same checks with small budgets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.factories import upload_model
from tests.fuzz import hostile_models, random_header_bytes, secure_world
from tests.fuzz.hostile_tenant import run_hostile_tenant

ROOT = Path(__file__).resolve().parents[2]


class _Outcomes:
    """Pytest plugin: which parametrized operations passed or failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            if report.failed:
                self.failed.append(report.head_line or report.nodeid)
            elif report.passed:
                self.passed += 1


def run_schemathesis(examples: int) -> dict[str, object]:
    """Every operation of the served document, ``examples`` cases each, all checks on."""
    stats = Path(tempfile.mkdtemp()) / "cases.json"
    os.environ.update(INFAAS_FUZZ_EXAMPLES=str(examples), INFAAS_FUZZ_STATS=str(stats))
    outcomes = _Outcomes()
    pytest.main(
        ["-q", "-p", "no:cacheprovider", "--no-header", "-rN", str(ROOT / "tests" / "api" / "test_schemathesis.py")],
        plugins=[outcomes],
    )
    cases = json.loads(stats.read_text()) if stats.exists() else {}
    return {
        "operations": outcomes.passed + len(outcomes.failed),
        "cases": sum(cases.values()),
        "failed_operations": outcomes.failed,
    }


def run_uploads(count: int, seed: int) -> dict[str, object]:
    """Adversarial models, then ``count`` random blobs behind real ONNX headers; every one must be a 4xx,
    nothing stored, and the server still answering."""
    rng = np.random.default_rng(seed)
    home = Path(tempfile.mkdtemp(prefix="infaas-fuzz-"))
    failures: list[str] = []
    tried = 0
    with secure_world(home / "home") as (client, services, tenants):
        blobs = list(hostile_models(seed).items())
        blobs += [(f"random-{i}", random_header_bytes(rng, int(rng.integers(0, 65536)))) for i in range(count)]
        for label, blob in blobs:
            tried += 1
            response = upload_model(client, "fuzzed", blob, headers=tenants.alice, filename="../../x.onnx")
            if not 400 <= response.status_code < 500:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")
                client.delete("/v1/models/fuzzed", headers=tenants.admin)
            if services.store.list("models/") and not failures:
                failures.append(f"{label}: something was stored")
            if client.get("/v1/models", headers=tenants.alice).status_code != 200:
                failures.append(f"{label}: the server stopped serving")
    return {"uploads": tried, "failures": failures}


def main() -> int:
    """Run every part and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="schemathesis cases per operation")
    parser.add_argument("--uploads", type=int, default=300, help="random ONNX-looking uploads")
    parser.add_argument("--hostile-rounds", type=int, default=50, help="random variations of each hostile-tenant case")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    started = time.monotonic()
    summary = {
        "seed": args.seed,
        "schemathesis": run_schemathesis(args.examples),
        "uploads": run_uploads(args.uploads, args.seed),
        "hostile_tenant": run_hostile_tenant(args.hostile_rounds, args.seed),
    }
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2))
    failed = (
        summary["schemathesis"]["failed_operations"]
        or summary["uploads"]["failures"]
        or summary["hostile_tenant"]["failures"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
