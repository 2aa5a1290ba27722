"""The instance's batching rule as a pure function (shared with the fleet simulator)."""

from infaas.selector import ProfileCurve
from infaas.worker.instance import batch_size, flush_at

CURVE = ProfileCurve(
    batches=(1, 8), latencies_ms=(2.0, 10.0), tails_ms=(3.0, 12.0), load_ms=5.0, memory_mb=10.0, best_batch=8
)


def test_full_batch_flushes_now() -> None:
    assert flush_at([(0.0, 4, None), (0.1, 4, None)], 8, CURVE) is None


def test_without_deadline_waits_one_best_batch_service_time() -> None:
    assert flush_at([(1.0, 1, None), (1.002, 1, None)], 8, CURVE) == 1.0 + 0.010


def test_tightest_deadline_less_the_next_batch_service_time() -> None:
    # Two rows waiting: the batch one row bigger (3 rows) is profiled at the batch-8 time, 10 ms.
    at = flush_at([(1.0, 1, 1.5), (1.001, 1, 1.015)], 8, CURVE)
    assert at is not None and abs(at - (1.015 - 0.010)) < 1e-12


def test_batch_takes_in_order_up_to_max_rows_and_always_the_oldest() -> None:
    assert batch_size([3, 3, 3], 8) == 2
    assert batch_size([20, 1], 8) == 1  # bigger than a batch alone: runs alone
    assert batch_size([1] * 10, 8) == 8


def test_no_hold_when_a_full_batch_is_not_cheaper_per_row() -> None:
    # ResNet-18's static INT8: 2.15 ms per row alone, 2.18 per row at batch 16. Waiting buys nothing.
    flat = ProfileCurve(
        batches=(1, 16), latencies_ms=(2.15, 34.9), tails_ms=(3.0, 40.0), load_ms=5.0, memory_mb=10.0, best_batch=1
    )
    assert flush_at([(1.0, 1, None)], 16, flat) is None
    assert flush_at([(1.0, 1, None), (1.001, 2, 9.0)], 16, flat) is None
    # Three rows cost the batch-4 time shared by four; batch 4 is the best and no bigger batch is cheaper.
    four = ProfileCurve(
        batches=(1, 4, 8),
        latencies_ms=(2.5, 8.0, 17.0),
        tails_ms=(3.0, 9.0, 19.0),
        load_ms=5.0,
        memory_mb=10.0,
        best_batch=4,
    )
    assert flush_at([(1.0, 3, None)], 8, four) is None
    assert flush_at([(1.0, 1, None)], 8, four) == 1.0 + 0.017  # 2.0 ms per row at batch 4 against 2.5 alone
    # Just cheaper than the band allows is still no reason to wait; clearly cheaper is.
    band = ProfileCurve(
        batches=(1, 16), latencies_ms=(2.0, 29.0), tails_ms=(3.0, 40.0), load_ms=5.0, memory_mb=10.0, best_batch=16
    )
    assert flush_at([(1.0, 1, None)], 16, band) is None
    gain = ProfileCurve(
        batches=(1, 16), latencies_ms=(2.0, 20.0), tails_ms=(3.0, 25.0), load_ms=5.0, memory_mb=10.0, best_batch=16
    )
    assert flush_at([(1.0, 1, None)], 16, gain) == 1.0 + 0.020


def test_a_request_that_would_make_the_batch_miss_a_deadline_waits_for_the_next_run() -> None:
    # One row runs in 2 ms, two or more in 10 ms (the batch-8 profile).
    assert batch_size([1, 1], 8, [1.005, None], _service, now=1.0) == 1  # 10 ms would miss the oldest's 5 ms
    assert batch_size([1, 1], 8, [None, 1.005], _service, now=1.0) == 1  # ... or the newcomer's own
    assert batch_size([1, 1], 8, [1.020, 1.020], _service, now=1.0) == 2  # both meet 20 ms together
    assert batch_size([1, 1, 1], 8, [1.020, 1.008, 1.030], _service, now=1.0) == 1


def test_a_batch_already_late_keeps_filling_and_no_deadlines_fill_to_the_best_batch() -> None:
    assert batch_size([1, 1, 1], 8, [1.001, 1.001, 1.001], _service, now=1.0) == 3  # late alone: run them all
    assert batch_size([1, 1, 1], 8, [None, None, None], _service, now=1.0) == 3
    assert batch_size([1, 1, 1], 8) == 3  # no service estimate: rows alone decide


def _service(rows: int) -> float:
    return CURVE.service_ms(rows) / 1000.0
