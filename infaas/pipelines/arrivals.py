"""Live pipeline arrivals: when each pipeline query arrived, for the tuner's traffic envelopes.

Kept in the front end's process, per query engine (so two services in one test process do not share it), for
the last ``KEEP_S`` seconds: the tuner's longest window. The autoscaler runs in every front end and the
leader acts, so with several front ends the leader sees only the arrivals it served itself; one front end (what
the benchmarks and the single-node deployment run) sees them all.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque

KEEP_S = 60.0
MAX_KEPT = 200_000  # per pipeline: 3,300 q/s for 60 s; beyond, the oldest go first


class ArrivalLog:
    """Thread-safe per-pipeline arrival times (``time.monotonic``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}

    def record(self, pipeline: str, at: float | None = None) -> None:
        """One query of ``pipeline`` arrived (now, unless ``at``)."""
        now = time.monotonic() if at is None else at
        with self._lock:
            times = self._times.setdefault(pipeline, deque(maxlen=MAX_KEPT))
            times.append(now)
            while times and times[0] < now - KEEP_S:
                times.popleft()

    def recent(self, pipeline: str, now: float | None = None) -> list[float]:
        """The arrivals of the last ``KEEP_S`` seconds, oldest first."""
        since = (time.monotonic() if now is None else now) - KEEP_S
        with self._lock:
            return [t for t in self._times.get(pipeline, ()) if t >= since]


_LOGS: weakref.WeakKeyDictionary[object, ArrivalLog] = weakref.WeakKeyDictionary()
_LOGS_LOCK = threading.Lock()


def arrivals_of(engine: object) -> ArrivalLog:
    """The arrival log of the pipelines served through ``engine`` (made on first use)."""
    with _LOGS_LOCK:
        log = _LOGS.get(engine)
        if log is None:
            log = _LOGS[engine] = ArrivalLog()
        return log


__all__ = ["KEEP_S", "ArrivalLog", "arrivals_of"]
