"""The pure parts of benchmarks/peers.py (bodies, MLServer settings, wrk parsing, verdicts, profiles): no network."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import peers, peers_models
from benchmarks.peers_models import PeerModel


def _model(name: str = "mlp", max_batch: int = 16) -> PeerModel:
    return PeerModel(
        name=name,
        task="digits-classification",
        onnx_path=Path("/nowhere/m.onnx"),
        validation_path=Path("/nowhere/m.npz"),
        inputs={"input": ("FP32", [1, 64])},
        max_batch=max_batch,
        description="test",
    )


def test_oip_body_carries_every_input_with_its_shape_type_and_the_fidelity_floor() -> None:
    sample = {
        "input_ids": np.array([[101, 7, 102]], dtype=np.int64),
        "attention_mask": np.array([[1, 1, 1]], dtype=np.int64),
    }
    body = json.loads(peers.oip_body(sample, {"input_ids": "INT64", "attention_mask": "INT64"}, 0.99))
    assert body["parameters"] == {"slo_min_fidelity": 0.99}
    assert [t["name"] for t in body["inputs"]] == ["input_ids", "attention_mask"]
    assert body["inputs"][0] == {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [101, 7, 102]}
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2) / 16
    tensor = json.loads(peers.oip_body({"input": image}, {"input": "FP32"}, 0.99))["inputs"][0]
    assert np.array_equal(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]), image)


def test_mlserver_settings_batch_adaptively_with_one_worker_per_core_and_name_the_runtime_class() -> None:
    config = peers.model_settings(_model(max_batch=8), "./model.onnx", 0.005, threads=1)
    assert config["max_batch_size"] == 8 and config["max_batch_time"] == 0.005
    assert config["parameters"] == {
        "uri": "./model.onnx",
        "extra": {"intra_op_threads": 1, "graph_optimization": "all"},
    }
    module, _, cls = config["implementation"].rpartition(".")
    source = (Path(peers.__file__).parent / f"{module}.py").read_text()
    assert f"class {cls}(MLModel)" in source
    server = peers.mlserver_settings(8080, 8081, 8082, workers=2)
    assert server["parallel_workers"] == 2 and server["debug"] is False
    assert len({server["http_port"], server["grpc_port"], server["metrics_port"]}) == 3


def test_parse_wrk_reads_post_lua_summary_line() -> None:
    out = (
        "Running 10s test @ http://x\n"
        'WRK_JSON {"requests":2000,"duration_us":10000000,"bytes":1,'
        '"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},'
        '"latency_us":{"mean":7900.0,"stdev":1.0,"min":1,"p50":7000,"p90":9000,"p99":21000,"p999":30000,"max":40000}}\n'
    )
    result = peers.parse_wrk(out)
    assert result["rps"] == 200.0 and result["errors"] == 3
    assert (result["p50_ms"], result["p99_ms"], result["mean_ms"]) == (7.0, 21.0, 7.9)
    with pytest.raises(ValueError, match="WRK_JSON"):
        peers.parse_wrk("wrk: connection refused\n")


def test_combine_takes_the_median_of_each_figure_and_keeps_the_rounds() -> None:
    runs = [
        {"rps": 100.0, "p50_ms": 5.0, "p99_ms": 9.0, "mean_ms": 5.0, "errors": 0},
        {"rps": 300.0, "p50_ms": 3.0, "p99_ms": 30.0, "mean_ms": 4.0, "errors": 1},
        {"rps": 200.0, "p50_ms": 4.0, "p99_ms": 10.0, "mean_ms": 6.0, "errors": 0},
    ]
    merged = peers.combine(runs)
    assert (merged["rps"], merged["p50_ms"], merged["p99_ms"], merged["mean_ms"]) == (200.0, 4.0, 10.0, 5.0)
    assert merged["errors"] == 1 and merged["rounds"] == runs
    assert "server_cpu_us" not in merged  # only figures every round has


def test_verdict_applies_issue_15_targets() -> None:
    peer = {"rps": 100.0, "p99_ms": 40.0, "errors": 0}
    fast = {"rps": 310.0, "p99_ms": 40.0, "errors": 0}
    assert peers.verdict("minilm", fast, peer, 0.995)["met"]
    missed = peers.verdict("minilm", {"rps": 290.0, "p99_ms": 20.0, "errors": 0}, peer, 0.995)
    assert not missed["met"] and missed["rps_ratio"] == 2.9 and not missed["checks"]["rps_at_least_3x"]
    assert "cpu_efficiency_ratio" not in missed
    cpu = peers.verdict("minilm", fast | {"server_cpu_us": 500.0}, peer | {"server_cpu_us": 2000.0}, 0.995)
    assert cpu["cpu_efficiency_ratio"] == 4.0 and cpu["met"]
    assert not peers.verdict("resnet18", fast, peer, 0.98)["met"]  # a variant below the fidelity floor
    assert not peers.verdict("resnet18", fast, peer, None)["met"]
    assert not peers.verdict("resnet18", fast | {"p99_ms": 41.0}, peer, 1.0)["met"]  # slower tail
    # The MLP also needs p99 <= 1/4 of the peer's.
    assert not peers.verdict("mlp", fast, peer, 1.0)["met"]
    assert peers.verdict("mlp", fast | {"p99_ms": 10.0}, peer, 1.0)["met"]
    assert not peers.verdict("mlp", fast | {"p99_ms": 10.0, "errors": 3}, peer, 1.0)["met"]


def test_summarize_profile_shares_own_and_inclusive_time() -> None:
    raw = "\n".join(
        [
            "process 1:thread (MainThread);run (/srv/uvicorn/main.py:10);infer (/srv/infaas/engine.py:5) 6",
            "process 1:thread (MainThread);run (/srv/uvicorn/main.py:10);parse (/srv/infaas/oip.py:9) 2",
            "process 1:thread (worker-0);work (/srv/infaas/worker.py:3);MlasSgemm 2",
            "garbage line",
        ]
    )
    summary = peers.summarize_profile(raw)
    assert summary["samples"] == 10
    assert summary["own_pct"][0] == ["infer (engine.py:5)", 60.0]
    assert ["MlasSgemm", 20.0] in summary["own_pct"]
    assert ["run (main.py:10)", 80.0] in summary["inclusive_pct"]
    assert summary["threads_pct"] == [["process 1:thread (MainThread)", 80.0], ["process 1:thread (worker-0)", 20.0]]


def test_tree_cpu_seconds_counts_a_busy_child() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass\ntime.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and peers.tree_cpu_seconds(child.pid) < 0.4:
            time.sleep(0.1)
        # This test process's tree includes the child, which has burned ~0.5 s of CPU.
        assert peers.tree_cpu_seconds(child.pid) >= 0.4
        assert peers.tree_cpu_seconds(os.getpid()) >= peers.tree_cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()


def test_digit_images_upsample_each_pixel_to_a_block_on_three_channels() -> None:
    flat = np.arange(64, dtype=np.float32).reshape(1, 64) / 64
    images = peers_models.digit_images(flat, size=32)
    assert images.shape == (1, 3, 32, 32) and images.dtype == np.float32
    assert np.all(images[0, :, 0:4, 4:8] == flat[0, 1])  # pixel (0, 1) -> rows 0-3, columns 4-7
    assert np.array_equal(images[0, 0], images[0, 2])


def test_recipe_keys_differ_per_model_and_peer_model_round_trips() -> None:
    keys = {peers_models.recipe_key(name) for name in peers_models.MODELS}
    assert len(keys) == len(peers_models.MODELS)
    model = _model()
    assert PeerModel.from_json(json.loads(json.dumps(model.to_json()))) == model


def test_variant_row_keeps_the_profile_by_batch() -> None:
    profile = {
        "batch_size": 1,
        "latency_p50_ms": 2.0,
        "throughput_per_s": 500.0,
        "replica_throughput_per_s": [500.0, 900.0],
    }
    variant = {"name": "cpu-int8-dynamic", "status": "ready", "reason": None, "threads": 1, "fidelity": 0.995}
    variant |= {
        "fidelity_metric": "cosine",
        "profiles": [profile | {"batch_invariant": False}, profile | {"batch_size": 8}],
    }
    row = peers.variant_row(variant)
    assert row["batch_invariant"] is False and row["p50_ms_by_batch"] == {1: 2.0, 8: 2.0}
    assert row["replica_rows_per_s"] == {1: [500.0, 900.0], 8: [500.0, 900.0]} and row["fidelity"] == 0.995
    assert "p50_ms_by_batch" not in peers.variant_row({"name": "cuda-fp16", "status": "skipped", "profiles": []})
