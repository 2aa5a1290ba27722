"""Property-based conformance of the served OpenAPI document: every operation, with a valid admin key.

Zero 5xx, and every response's status code, content type, headers and body match the document. The
example budget per operation is ``INFAAS_FUZZ_EXAMPLES`` (small in ``make test``; ``run_fuzz.py`` raises
it); when ``INFAAS_FUZZ_STATS`` names a file, per-operation case counts are written there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import checks

from infaas.services import Services, build_services
from tests.fuzz import ADMIN_KEY, make_tenants, secure_app, secure_settings

EXAMPLES = int(os.environ.get("INFAAS_FUZZ_EXAMPLES", "8"))
STATS_FILE = os.environ.get("INFAAS_FUZZ_STATS")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
CASES: Counter[str] = Counter()


def _build() -> tuple[FastAPI, Services, Path]:
    """The app, served in-process (ASGI). Built at import because schemathesis's pytest loader needs the
    schema then (its fixture loader does not work with this pytest); services are attached up front
    because schemathesis does not run the app's lifespan."""
    home = Path(tempfile.mkdtemp(prefix="infaas-schemathesis-"))
    settings_ = secure_settings(home / "home")
    services = build_services(settings_)
    app = secure_app(settings_, services)
    app.state.services = services
    make_tenants(services)
    return app, services, home


APP, SERVICES, HOME = _build()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    SERVICES.close()
    shutil.rmtree(HOME, ignore_errors=True)
    if STATS_FILE:
        Path(STATS_FILE).write_text(json.dumps(dict(CASES), indent=1, sort_keys=True))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not STATS_FILE,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms(case: schemathesis.Case) -> None:
    CASES[f"{case.method} {case.path}"] += 1
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, checks=CHECKS)
