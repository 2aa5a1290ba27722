"""Where a pipeline's plan and tuner decisions are shown (issue 17, point 4): the console's pipelines page (DAG
with conditions, scale factors, plan per stage, its own recent decisions), ``GET /v1/pipelines/{name}``,
``/v1/decisions?level=pipeline`` and ``infaas pipeline show``."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from infaas.services import Services
from tests.api.test_cli_pipelines import run as run  # the fixture: the CLI against this app
from tests.api.test_pipelines_api import _pipeline
from tests.api.test_pipelines_api import zoo as zoo  # the fixture: filter -> [cond] -> head, and wide


def _row(page: str, stage: str) -> str:
    found = re.search(rf"<tr>\s*<td>{stage}</td>(.*?)</tr>", page, re.S)
    assert found, f"no row for stage {stage}"
    return found.group(1)


def test_the_page_shows_dag_plan_and_decisions(client: TestClient, services: Services, zoo: dict[str, bytes]) -> None:
    assert "No pipelines yet" in client.get("/console/pipelines").text
    assert client.post("/v1/pipelines", json=_pipeline(p99_ms=20)).status_code == 201
    assert client.post("/v1/pipelines", json=_pipeline(name="other")).status_code == 201
    page = client.get("/console/pipelines").text
    assert "not planned" in page and 'href="/console/pipelines" class="active"' in page

    plan = client.post("/v1/pipelines/cascade/plan").json()["plan"]
    services.metadata.record_decision(
        level="pipeline", action="tune_up", target="cascade/h", inputs={"rate_per_s": 250.0}, reason="burst seen"
    )
    services.metadata.record_decision(
        level="pipeline", action="tune_down", target="other/h", inputs={}, reason="quiet elsewhere"
    )
    response = client.get("/console/pipelines")
    assert response.status_code == 200
    page = response.text
    section = page[page.index('id="pipeline-cascade"') : page.index('id="pipeline-other"')]
    assert f"{plan['p99_ms']:.2f} ms" in section and "meets it" in section
    assert "f.y" in section and "score of class 1 &gt; 0.5" in section  # the conditional edge
    for stage, planned in plan["stages"].items():
        row = _row(section, stage)
        assert f"{planned['model']}/{planned['variant']}" in row
        assert f"<td>{planned['batch']}</td>" in row and f"<td>{planned['replicas']}</td>" in row
    assert "burst seen" in section and "tune_up" in section and "rate_per_s" in section
    assert "quiet elsewhere" not in section  # another pipeline's decision
    assert "quiet elsewhere" in page[page.index('id="pipeline-other"') :]


def test_the_api_and_cli_show_a_pipelines_decisions(
    run,  # type: ignore[no-untyped-def]  # noqa: ANN001
    client: TestClient,
    services: Services,
    zoo: dict[str, bytes],
) -> None:
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    assert client.get("/v1/pipelines/cascade").json()["decisions"] == []
    services.metadata.record_decision(
        level="pipeline",
        action="tune_up",
        target="cascade/h",
        inputs={"rate_per_s": 250.0, "to_replicas": 3},
        reason="burst seen",
        outcome="3 replica(s) on local; batch cap [4]",
    )
    services.metadata.record_decision(level="model", action="add_replica", target="local/x/v", inputs={}, reason="no")
    (decision,) = client.get("/v1/pipelines/cascade").json()["decisions"]
    assert decision["action"] == "tune_up" and decision["target"] == "cascade/h"
    assert decision["inputs"] == {"rate_per_s": 250.0, "to_replicas": 3} and decision["outcome"].startswith("3 rep")
    by_level = client.get("/v1/decisions", params={"level": "pipeline"})
    assert by_level.status_code == 200 and [d["target"] for d in by_level.json()] == ["cascade/h"]
    shown = run("pipeline", "show", "cascade")
    assert "recent decisions" in shown and "tune_up" in shown and "burst seen" in shown
