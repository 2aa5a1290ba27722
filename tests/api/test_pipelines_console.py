"""The console's pipelines page (issue 17, point 4): each pipeline with its DAG (conditions included), scale
factors, the stored plan per stage and its own recent tuner decisions."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from infaas.services import Services
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
