"""The maintenance thread: every entry runs at once (the start-up recovery), then at its own period; one that
raises is logged and runs again, and ``stop`` ends the thread."""

from __future__ import annotations

import logging

import pytest

from infaas.jobs.periodic import Every, Periodic
from tests.factories import wait_for


def test_entries_run_at_start_then_at_their_periods_and_survive_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"often": 0, "failing": 0, "rare": 0}

    def often() -> None:
        calls["often"] += 1

    def failing() -> None:
        calls["failing"] += 1
        raise RuntimeError("database away")

    def rare() -> None:
        calls["rare"] += 1

    periodic = Periodic([Every(0.02, often, "often"), Every(0.02, failing, "failing"), Every(3600, rare, "rare")])
    with caplog.at_level(logging.ERROR, logger="infaas.jobs.periodic"):
        periodic.start()
        try:
            assert wait_for(lambda: calls["often"] >= 5 and calls["failing"] >= 5, 10, interval_s=0.01)
        finally:
            periodic.stop()
    assert calls["rare"] == 1  # its start-up round only
    assert "failing failed; trying again in 0s" in caplog.text and "RuntimeError: database away" in caplog.text
    stopped = dict(calls)
    wait_for(lambda: False, 0.1)
    assert calls == stopped  # nothing runs after stop


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Periodic([Every(0, lambda: None, "never")])
