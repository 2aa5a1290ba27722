"""``infaas query`` against the API: outputs are the model's, and the answer says who served it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app
from infaas.services import Services
from tests.factories import TASK, profiles, reference_outputs, seed_model

MLP_VARIANTS = {"cpu-fp32-1t": profiles({1: 0.25, 8: 1.0, 32: 8.0})}


@pytest.fixture
def runner(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    return CliRunner()


def test_query_by_name_and_by_task(runner: CliRunner, services: Services, mlp_path: Path, tmp_path: Path) -> None:
    seed_model(services, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=MLP_VARIANTS)
    x = np.random.default_rng(3).normal(size=(3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = reference_outputs(mlp_path, x).argmax(axis=-1).tolist()

    by_name = runner.invoke(app, ["query", "mlp", "--input", str(tmp_path / "x.npy"), "--latency-ms", "50"])
    assert by_name.exit_code == 0, by_name.output
    assert f"argmax {expected}" in by_name.output and "served by mlp/" in by_name.output

    np.savez(tmp_path / "x.npz", x=x)
    by_task = runner.invoke(app, ["query", "--task", TASK, "--input", str(tmp_path / "x.npz")])
    assert by_task.exit_code == 0, by_task.output
    assert f"argmax {expected}" in by_task.output


def test_query_errors(runner: CliRunner, services: Services, mlp_path: Path, tmp_path: Path) -> None:
    seed_model(services, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=MLP_VARIANTS)
    np.save(tmp_path / "x.npy", np.zeros((1, 8), dtype=np.float32))
    both = runner.invoke(app, ["query", "mlp", "--task", TASK, "--input", str(tmp_path / "x.npy")])
    assert both.exit_code == 2
    unknown = runner.invoke(app, ["query", "nope", "--input", str(tmp_path / "x.npy")])
    assert unknown.exit_code == 1 and "404" in unknown.output
    too_accurate = runner.invoke(app, ["query", "mlp", "--input", str(tmp_path / "x.npy"), "--min-accuracy", "0.999"])
    assert too_accurate.exit_code == 1 and "422" in too_accurate.output


def test_query_on_infeasible(runner: CliRunner, services: Services, mlp_path: Path, tmp_path: Path) -> None:
    seed_model(services, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=MLP_VARIANTS)
    np.save(tmp_path / "x.npy", np.zeros((1, 8), dtype=np.float32))
    args = ["query", "mlp", "--input", str(tmp_path / "x.npy"), "--latency-ms", "0.01"]
    rejected = runner.invoke(app, [*args, "--on-infeasible", "reject"])
    said = " ".join(rejected.output.split())  # rich wraps long lines
    assert rejected.exit_code == 1 and "error 503" in said and "nothing was run; best achievable: latency" in said
    served = runner.invoke(app, args)  # best effort by default
    assert served.exit_code == 0 and "(SLO at risk)" in served.output
    wrong = runner.invoke(app, [*args, "--on-infeasible", "later"])
    assert wrong.exit_code == 2 and "best_effort" in wrong.output and "reject" in wrong.output
