"""Migration 0004: profiles stored before it kept agreement/cosine/closeness with the original as their "accuracy";
those numbers become fidelity and the accuracy unknown, while labelled accuracies stay (issue 12 point 1)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from infaas.db.migrate import upgrade

ROWS = [  # (accuracy, accuracy_metric) as revision 0003 stored them
    (0.93, "top1"),
    (0.71, "1-rel-error"),
    (0.99, "agreement"),
    (1.0, "agreement-synthetic"),
    (0.97, "cosine"),
    (0.88, "fidelity"),
    (None, "unavailable"),
]


def test_old_agreement_accuracies_become_fidelity(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for i, (accuracy, metric) in enumerate(ROWS, start=1):
                conn.execute(
                    text(
                        "INSERT INTO profiles (id, variant_id, batch_size, threads, load_ms, latency_p50_ms, "
                        "latency_p99_ms, throughput_per_s, memory_mb, accuracy, accuracy_metric, host, measured_at) "
                        "VALUES (:id, 1, 1, 1, 1.0, 1.0, 2.0, 1000.0, 10.0, :accuracy, :metric, 'h', :at)"
                    ),
                    {"id": i, "accuracy": accuracy, "metric": metric, "at": datetime.now(UTC)},
                )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT accuracy, accuracy_metric, fidelity, fidelity_metric FROM profiles ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        (0.93, "top1", None, None),
        (0.71, "1-rel-error", None, None),
        (None, None, 0.99, "agreement"),
        (None, None, 1.0, "agreement-synthetic"),
        (None, None, 0.97, "cosine"),
        (None, None, 0.88, "1-rel-error"),
        (None, None, None, None),
    ]
