"""Offline jobs, embedded mode: REST submit → in-process runner → result equal to ONNX Runtime's own."""

from __future__ import annotations

import io
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infaas.cascade_session import KIND
from infaas.catalog import ProfileInfo
from infaas.config import Settings
from infaas.db.models import VariantStatus
from infaas.offline import JobPlan, NoVariant, choose_plan, cost_per_sample, plan_variant, run_offline_job
from infaas.services import Services, build_services
from tests.factories import (
    TASK,
    model_info,
    npy_bytes,
    profiles,
    reference_outputs,
    seed_model,
    variant_info,
    wait_for_job,
    write_mlp,
)


def best_at_batch_8(threads: int = 1, accuracy: float = 0.9, p50_ms_at_8: float = 1.0) -> tuple[ProfileInfo, ...]:
    """Profiles of a CPU variant whose throughput is best at batch 8, the size an offline job then runs."""
    return profiles(
        {b: p50_ms_at_8 * f for b, f in ((1, 0.25), (8, 1.0), (32, 8.0))}, threads=threads, accuracy=accuracy
    )


# A model with one ready variant, registered straight into the catalog (no variant build).
seed_mlp = partial(seed_model, task=TASK, max_batch=32, variants={"cpu-fp32-1t": best_at_batch_8()})


# -- pure functions ------------------------------------------------------------------------------


def test_cost_per_sample_counts_cores_time_and_batch() -> None:
    prices = {"cpu-core": 0.036, "gpu": 3.6}
    # 2 cores × $0.036/h for 10 ms over 10 samples: 0.072 $/h × 10/3.6e6 h / 10.
    assert cost_per_sample("cpu", 2, 16, 10.0, 10, prices) == pytest.approx(0.072 * 10 / 3.6e6 / 10)
    # threads=0 holds every core of the worker.
    assert cost_per_sample("cpu", 0, 4, 10.0, 1, prices) == pytest.approx(4 * 0.036 * 10 / 3.6e6)
    # A GPU variant holds one GPU whatever its thread count; bigger batches are cheaper per sample.
    assert cost_per_sample("gpu", 0, 4, 36.0, 4, prices) == pytest.approx(3.6 * 36 / 3.6e6 / 4)
    assert cost_per_sample("tpu", 1, 1, 10.0, 1, prices) == 0.0


def test_a_cascade_plan_is_priced_by_its_mean_not_the_p50_of_its_cheap_stage() -> None:
    """A cascade's p50 at batch 8 is 1 ms (most batches answered by the cheap stage), its measured throughput says
    4 ms per batch on average (escalated batches included): the plan's time and cost are the 4 ms."""
    measured = tuple(
        replace(p, throughput_per_s=p.batch_size / (4.0 * p.latency_p50_ms) * 1000.0) for p in best_at_batch_8()
    )
    cascade = variant_info("m", "cascade-cpu-fp32", measured, kind=KIND)
    plan = plan_variant(model_info("m"), cascade, 80, 8, {"cpu-core": 1.0})
    assert plan.batch == 8 and plan.service_ms == pytest.approx(4.0)
    assert plan.cost_per_sample == pytest.approx(cost_per_sample("cpu", 1, 8, 4.0, 8, {"cpu-core": 1.0}))
    assert plan.estimated_s == pytest.approx((5.0 + 10 * 4.0) / 1000.0)  # load + 10 batches of 8
    plain = plan_variant(model_info("m"), variant_info("m", "cpu-fp32", measured), 80, 8, {"cpu-core": 1.0})
    assert plain.service_ms == pytest.approx(1.0)  # a plain variant's work does not depend on its rows: p50


def _plans(services: Services, mlp_path: Path, samples: int) -> list[JobPlan]:
    variants = {
        "cheap-slow": best_at_batch_8(1, 0.90, 8.0),
        "fast-dear": best_at_batch_8(8, 0.90, 2.0),
        "accurate": best_at_batch_8(2, 0.99, 5.0),
    }
    seed_mlp(services, "mlp", mlp_path.read_bytes(), variants=variants)
    model = services.metadata.get_model("mlp")
    assert model is not None
    return [plan_variant(model, v, samples, 8, {"cpu-core": 1.0}) for v in model.variants]


def test_choose_plan_prefers_cheapest_then_deadline(services: Services, mlp_path: Path) -> None:
    plans = _plans(services, mlp_path, samples=8000)  # 1000 batches of 8
    by_name = {p.variant.name: p for p in plans}
    assert all(p.batch == 8 for p in plans)  # best throughput is at batch 8
    assert by_name["cheap-slow"].estimated_s == pytest.approx((5 + 1000 * 8.0) / 1000)

    chosen, note = choose_plan(plans, 0.5, None)
    assert chosen.variant.name == "cheap-slow" and note is None  # 1 core × 8 ms < 2 × 5 < 8 × 2
    chosen, note = choose_plan(plans, 0.95, None)
    assert chosen.variant.name == "accurate" and note is None
    chosen, note = choose_plan(plans, 0.5, 5.5)  # cheap-slow needs ~8 s; accurate ~5 s fits
    assert chosen.variant.name == "accurate" and note is None
    chosen, note = choose_plan(plans, 0.5, 1.0)  # nothing fits: the fastest runs, with a note
    assert chosen.variant.name == "fast-dear" and note and "deadline" in note
    with pytest.raises(NoVariant, match=r"best available is mlp/accurate at 0\.990"):
        choose_plan(plans, 0.999, None)


# -- REST ----------------------------------------------------------------------------------------


def test_job_roundtrip_matches_onnxruntime(client: TestClient, services: Services, mlp_path: Path) -> None:
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    x = np.random.default_rng(3).normal(size=(203, 8))  # float64: converted to the model's float32
    response = client.post(
        "/v1/jobs",
        data={"model": "mlp", "min_accuracy": "0.8"},
        files={"input": ("x.npy", npy_bytes(x), "application/octet-stream")},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"

    body = wait_for_job(client, job_id)
    assert body["status"] == "done", body
    assert body["progress"] == 1.0 and body["variant"] == "mlp/cpu-fp32-1t"
    assert body["result_key"] == f"jobs/{job_id}/result.npz" and body["result_url"] == f"/v1/jobs/{job_id}/result"
    assert body["error"] is None and body["note"] is None

    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    outputs = np.load(io.BytesIO(result.content))
    np.testing.assert_allclose(outputs["y"], reference_outputs(mlp_path, x.astype(np.float32)), rtol=1e-5)
    assert [j["id"] for j in client.get("/v1/jobs").json()] == [job_id]


def test_task_job_with_npz_picks_cheapest_visible_model(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path
) -> None:
    other = write_mlp(tmp_path / "other.onnx", seed=5)
    seed_mlp(services, "dear", mlp_path.read_bytes(), variants={"v": best_at_batch_8(4, 0.95, 1.0)})
    seed_mlp(services, "cheap", other.read_bytes(), variants={"v": best_at_batch_8(1, 0.92, 1.0)})
    seed_mlp(
        services, "foreign", other.read_bytes(), owner="someone-else", variants={"v": best_at_batch_8(1, 0.99, 0.1)}
    )
    x = np.random.default_rng(4).normal(size=(50, 8)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x)
    response = client.post(
        "/v1/jobs",
        data={"task": TASK, "min_accuracy": "0.9"},
        files={"input": ("in.npz", buffer.getvalue(), "application/octet-stream")},
    )
    assert response.status_code == 202, response.text
    body = wait_for_job(client, response.json()["id"])
    assert body["status"] == "done" and body["variant"] == "cheap/v", body  # never the other tenant's model
    outputs = np.load(io.BytesIO(client.get(f"/v1/jobs/{body['id']}/result").content))
    np.testing.assert_allclose(outputs["y"], reference_outputs(other, x), rtol=1e-5)

    # A missed deadline still runs, with a note.
    response = client.post(
        "/v1/jobs",
        data={"task": TASK, "deadline_s": "0.001"},
        files={"input": ("in.npz", buffer.getvalue(), "application/octet-stream")},
    )
    body = wait_for_job(client, response.json()["id"])
    assert body["status"] == "done" and "deadline" in body["note"] and body["error"] is None


def test_input_key_reuses_a_stored_input(client: TestClient, services: Services, mlp_path: Path) -> None:
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    x = np.ones((4, 8), np.float32)
    services.store.put_bytes("uploads/local/batch.npy", npy_bytes(x))
    response = client.post("/v1/jobs", data={"model": "mlp", "input_key": "uploads/local/batch.npy"})
    assert response.status_code == 202, response.text
    first = wait_for_job(client, response.json()["id"])
    assert first["status"] == "done"
    # A finished job's files are valid inputs for the same tenant.
    response = client.post("/v1/jobs", data={"model": "mlp", "input_key": f"jobs/{first['id']}/input.npy"})
    assert response.status_code == 400  # the first job read from uploads/, it has no input.npy
    response = client.post("/v1/jobs", data={"model": "mlp", "input_key": "uploads/local/batch.npy"})
    assert wait_for_job(client, response.json()["id"])["status"] == "done"


def test_bad_job_requests_are_refused_before_queueing(client: TestClient, services: Services, mlp_path: Path) -> None:
    seed_mlp(services, "mlp", mlp_path.read_bytes(), variants={"cpu-fp32-1t": best_at_batch_8(accuracy=0.85)})
    services.store.put_bytes("uploads/other/x.npy", npy_bytes(np.ones((2, 8), np.float32)))
    good = {"input": ("x.npy", npy_bytes(np.ones((2, 8), np.float32)), "application/octet-stream")}

    def post(data: dict, files: dict | None = None) -> tuple[int, str]:
        response = client.post("/v1/jobs", data=data, files=files)
        return response.status_code, str(response.json().get("detail"))

    assert post({"model": "nope"}, good)[0] == 404
    assert post({"task": "no-such-task"}, good)[0] == 404
    code, detail = post({"model": "mlp"}, {"input": ("x.npy", npy_bytes(np.ones((2, 5), np.float32)), "a/b")})
    assert code == 400 and "[N, 8]" in detail
    code, detail = post({"model": "mlp"}, {"input": ("x.npy", npy_bytes(np.ones((2, 8), np.complex64)), "a/b")})
    assert code == 400 and "dtype" in detail
    code, detail = post({"model": "mlp"}, {"input": ("x.npy", b"not numpy at all", "a/b")})
    assert code == 400 and ".npy or .npz" in detail
    code, detail = post({"model": "mlp", "min_accuracy": "0.95"}, good)
    assert code == 422 and "best available is mlp/cpu-fp32-1t at 0.850" in detail
    for key in (
        "models/mlp/model.onnx",
        "uploads/other/x.npy",
        "../etc/passwd",
        "jobs/nope/input.npy",
        "uploads/local",
    ):
        code, detail = post({"model": "mlp", "input_key": key})
        assert code == 400 and "input_key" in detail, (key, detail)
    assert post({"model": "mlp", "task": TASK}, good)[0] == 400
    assert post({"model": "mlp"})[0] == 400  # no input at all
    assert post({"model": "mlp", "min_accuracy": "1.5"}, good)[0] == 400
    assert post({"model": "mlp", "deadline_s": "-1"}, good)[0] == 400
    assert services.metadata.list_jobs() == []
    assert services.store.list("jobs/") == []
    assert client.get("/v1/jobs/nope").status_code == 404


def test_rerun_is_idempotent(client: TestClient, services: Services, mlp_path: Path) -> None:
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    response = client.post(
        "/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npy", npy_bytes(np.ones((3, 8), np.float32)), "a/b")}
    )
    job_id = response.json()["id"]
    done = wait_for_job(client, job_id)
    stored = services.store.list("jobs/")
    result = services.store.get_bytes(f"jobs/{job_id}/result.npz")

    run_offline_job(services, job_id)  # a redelivered message for a finished job: nothing happens
    assert client.get(f"/v1/jobs/{job_id}").json()["updated_at"] == done["updated_at"]
    # Died after writing the result but before marking done: the rerun only marks it done.
    services.metadata.update_job(job_id, status="running", progress=0.5)
    run_offline_job(services, job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "done"
    assert services.store.list("jobs/") == stored
    assert services.store.get_bytes(f"jobs/{job_id}/result.npz") == result
    assert len(services.metadata.list_jobs()) == 1


def test_worker_side_failures_are_recorded(client: TestClient, services: Services, mlp_path: Path) -> None:
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    response = client.post(
        "/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npy", npy_bytes(np.ones((3, 8), np.float32)), "a/b")}
    )
    job_id = response.json()["id"]
    wait_for_job(client, job_id)
    # The model lost its variant between acceptance and execution: the job fails with a reason.
    services.store.delete_prefix(f"jobs/{job_id}/result.npz")
    services.metadata.set_variant_status("mlp", "cpu-fp32-1t", VariantStatus.FAILED, "rebuilt")
    services.metadata.update_job(job_id, status="queued")
    run_offline_job(services, job_id)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "failed" and "no usable variant" in body["error"] and body["note"] is None
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_jobs_are_private_to_their_tenant(tmp_path: Path, mlp_path: Path) -> None:
    settings = Settings(home=tmp_path / "auth-home", build_variants=False, autoscaler="off", admin_key="admin-secret")
    services = build_services(settings)
    try:
        with TestClient(create_app(settings, services=services)) as client:
            keyring = services.keyring
            alice = {"Authorization": f"Bearer {keyring.create('alice').secret}"}
            bob = {"Authorization": f"Bearer {keyring.create('bob').secret}"}
            seed_mlp(services, "mlp", mlp_path.read_bytes(), owner="alice", public=True)
            x = npy_bytes(np.ones((2, 8), np.float32))
            response = client.post("/v1/jobs", headers=alice, data={"model": "mlp"}, files={"input": ("x", x, "a/b")})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert wait_for_job(client, job_id, headers=alice)["status"] == "done"

            assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
            assert client.get(f"/v1/jobs/{job_id}/result", headers=bob).status_code == 404
            assert client.get("/v1/jobs", headers=bob).json() == []
            refused = client.post(
                "/v1/jobs", headers=bob, data={"model": "mlp", "input_key": f"jobs/{job_id}/input.npy"}
            )
            assert refused.status_code == 400
            services.store.put_bytes("uploads/bob/x.npy", x)
            own = client.post("/v1/jobs", headers=bob, data={"model": "mlp", "input_key": "uploads/bob/x.npy"})
            assert own.status_code == 202, own.text
            assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer admin-secret"}).status_code == 200
    finally:
        services.close()


def test_cli_submit_wait_status_fetch(
    client: TestClient, services: Services, mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import infaas.cli.client
    import infaas.cli.jobs
    from infaas.cli.jobs import job_app

    def local_client(timeout: float = 120.0) -> TestClient:
        return TestClient(client.app)

    monkeypatch.setattr(infaas.cli.client, "client", local_client)
    monkeypatch.setattr(infaas.cli.jobs, "client", local_client)
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    x = np.random.default_rng(9).normal(size=(10, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()

    submitted = runner.invoke(job_app, ["submit", "mlp", "--input", str(tmp_path / "x.npy"), "--wait"])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.split()[1]
    assert "done" in submitted.output and "mlp/cpu-fp32-1t" in submitted.output
    shown = runner.invoke(job_app, ["status", job_id])
    assert shown.exit_code == 0 and "done" in shown.output
    fetched = runner.invoke(job_app, ["fetch", job_id, "--out", str(tmp_path / "y.npz")])
    assert fetched.exit_code == 0, fetched.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], reference_outputs(mlp_path, x), rtol=1e-5)
    missing = runner.invoke(job_app, ["fetch", "nope", "--out", str(tmp_path / "z.npz")])
    assert missing.exit_code == 1 and not (tmp_path / "z.npz").exists()
    assert runner.invoke(job_app, ["submit", "mlp", "--task", TASK, "--input", str(tmp_path / "x.npy")]).exit_code == 2


def test_celery_delivery_settings_and_runner_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from infaas.jobs.celery_runner import RUN_TASK, CeleryRunner, make_celery

    monkeypatch.setenv("INFAAS_JOBS_QUEUE", "q-test")
    conf = make_celery("redis://127.0.0.1:6379/15").conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"] and conf.task_default_queue == "q-test"

    runner = CeleryRunner("redis://127.0.0.1:6379/15")
    sent: list[tuple] = []
    monkeypatch.setattr(runner.celery, "send_task", lambda name, args: sent.append((name, args)))
    runner.submit("offline_job", job_id="abc")
    assert sent == [(RUN_TASK, ["offline_job", {"job_id": "abc"}])]
    with pytest.raises(KeyError):
        runner.submit("no_such_task")
    runner.shutdown()


def test_jobs_worker_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from infaas.cli.jobs import jobs_worker

    monkeypatch.setattr("infaas.cli.jobs.get_settings", lambda: Settings(broker_url=None))
    app = typer.Typer()
    app.command()(jobs_worker)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2 and "INFAAS_BROKER_URL" in result.output


def _zeros_npz(rows: int) -> bytes:
    """``x``: ``rows`` x 8 float32 zeros, DEFLATE-compressed (a few KB per 8 MB)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((rows, 8), np.float32))
    return buffer.getvalue()


def test_compressed_inputs_are_bounded_from_their_headers(
    client: TestClient, services: Services, mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, item 2: a small .npz that expands past INFAAS_MAX_ARRAY_MB is refused (413) at submission,
    uploaded or by input_key, and by a worker whose bound is lower than the API's; nothing is queued."""
    seed_mlp(services, "mlp", mlp_path.read_bytes())
    monkeypatch.setattr(services.settings, "max_array_mb", 1.0)
    bomb = _zeros_npz(2**16)  # 2 MB of zeros in about 2 KB
    assert len(bomb) < 10_000
    response = client.post("/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npz", bomb, "a/b")})
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("array 'x' is 2.0 MB uncompressed (float32[65536, 8])")
    assert "past the limit of 1.0 MB (INFAAS_MAX_ARRAY_MB)" in response.json()["detail"]
    services.store.put_bytes("uploads/local/bomb.npz", bomb)
    response = client.post("/v1/jobs", data={"model": "mlp", "input_key": "uploads/local/bomb.npz"})
    assert response.status_code == 413, response.text
    assert services.metadata.list_jobs() == [] and services.store.list("jobs/") == []

    # Accepted under the API's bound, then run by a worker configured with a lower one: failed with the reason.
    response = client.post("/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npz", _zeros_npz(1000), "a/b")})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_for_job(client, job_id)["status"] == "done"
    services.store.delete_prefix(f"jobs/{job_id}/result.npz")
    services.metadata.update_job(job_id, status="queued")
    monkeypatch.setattr(services.settings, "max_array_mb", 0.01)
    run_offline_job(services, job_id)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "failed" and "INFAAS_MAX_ARRAY_MB" in body["error"], body
