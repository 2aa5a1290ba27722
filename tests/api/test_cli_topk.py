"""``infaas topk`` against the test app: the k best rows of a file, r, the precision and both variants."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.services import Services
from infaas.topk import top_k
from tests.api.test_topk_api import COLUMN, TASK, _query, pair  # noqa: F401  (the fixture)
from tests.factories import reference_outputs


@pytest.fixture
def run(client: TestClient, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    monkeypatch.setattr(importlib.import_module("infaas.cli.topk"), "out", Console(width=300))

    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return " ".join(result.output.split())

    return invoke


def test_topk_by_task_and_errors(run, services: Services, pair: dict[str, bytes], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    x = _query()
    np.savez(tmp_path / "x.npz", x=x)
    said = run("topk", "--task", TASK, "--input", str(tmp_path / "x.npz"), "-k", "3", "--column", str(COLUMN))
    assert "top 3 of 300 rows by y[:, 1] (approximate," in said and "estimated precision" in said
    assert "cheap: small/cpu-fp32 on 300 rows" in said and "expensive: big/cpu-fp32 on" in said
    best = top_k(reference_outputs(pair["big"], x)[:, COLUMN], 1)[0]
    assert f"1. row {best} " in said  # the big model's best row ranks first (re-scored rows include it here)

    np.save(tmp_path / "x.npy", x)
    by_model = run("topk", "big", "--input", str(tmp_path / "x.npy"), "-k", "2", "--column", "0")
    assert "top 2 of 300 rows by y[:, 0] (exact," in by_model and "cheap:" not in by_model
    too_many = run("topk", "big", "--input", str(tmp_path / "x.npy"), "-k", "301", "--column", "0", code=1)
    assert "400" in too_many and "'k' is 301 but the query has 300 rows" in too_many
    assert run("topk", "big", "--task", TASK, "--input", str(tmp_path / "x.npy"), "-k", "2", code=2)
