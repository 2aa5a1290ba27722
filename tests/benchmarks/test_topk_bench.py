"""benchmarks/topk.py's measuring loop on the API tests' model pair: both answers per query, precision of the
approximate one against the exact one, speed-ups and the target verdict computed from what was measured."""

from __future__ import annotations

import pytest

from benchmarks.topk import bench_task
from infaas.services import Services
from infaas.topk_serving import TopKService
from tests.api.test_topk_api import CLASSES, TASK, _query, pair  # noqa: F401  (the fixture)


def test_bench_task_measures_both_answers(services: Services, pair: dict[str, bytes]) -> None:  # noqa: F811
    services.start_serving()
    service = TopKService(services.engine, services.store, 256, 16)
    result = bench_task(service, TASK, _query(), "x", repeats=1, ks=(5, 20), columns=CLASSES)
    assert set(result) == {"k5", "k20"}
    for k, summary in ((5, result["k5"]), (20, result["k20"])):
        assert summary["k"] == k and summary["rows"] == 300 and len(summary["per_column"]) == CLASSES
        assert summary["modes"] == ["approximate"] and summary["pairs"] == ["small/cpu-fp32 -> big/cpu-fp32"]
        assert 0.8 <= summary["measured_precision_min"] <= summary["measured_precision_mean"] <= 1.0
        for row in summary["per_column"]:
            assert row["exact_wall_ms"] / row["approx_wall_ms"] > 0 and k <= row["rescored"] < 300
        assert summary["wall_speedup_median"] == pytest.approx(
            sorted(r["exact_wall_ms"] / r["approx_wall_ms"] for r in summary["per_column"])[1]
        )
        assert summary["meets_target"] == (
            summary["wall_speedup_median"] >= 3.0 and summary["measured_precision_mean"] >= 0.95
        )
