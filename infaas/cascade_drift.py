"""Drift of cascades: the live escalation share per cascade against what its validation rows promised.

A cascade's threshold was tuned on validation rows: the share of rows it escalates there has a bootstrap interval
(``variant_generator.cascades``, decision number ``escalation_interval``). When live traffic is no longer like
those rows (new inputs, another population), the share moves: more escalations cost more than the profile says,
fewer mean the cheap stage answers rows it was never shown to answer well. The engine counts each served cascade
query's rows and escalations here (no I/O on the query path); a checker thread compares each cascade's share over
the last ``window_s`` with its interval widened by the live share's own sampling error (two standard errors),
and when it stays outside for ``window_s`` with at least ``min_rows`` rows, calls ``on_stale`` once (the
composition root marks the variant ``stale``, so the selector stops choosing it, and queues a recalibration).
``status`` and ``snapshot`` are what ``/v1/stats``, the API and the console show.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infaas.catalog import CascadeDecisionInfo
from infaas.db.models import VariantStatus
from infaas.metadata import MetadataStore

log = logging.getLogger(__name__)

Interval = tuple[float, float]


@dataclass
class _Track:
    window: deque[tuple[float, int, int]] = field(default_factory=deque)  # (time, rows, escalated)
    rows: int = 0
    escalated: int = 0
    total_rows: int = 0
    total_escalated: int = 0
    outside_since: float | None = None
    stale: bool = False
    expected: Interval | None = None


class CascadeMonitor:
    """Per-cascade live escalation share and the stale decision (see the module docstring)."""

    def __init__(
        self,
        expected: Callable[[str], Interval | None],
        on_stale: Callable[[str, dict[str, Any]], None],
        *,
        window_s: float = 30.0,
        min_rows: int = 200,
        check_s: float = 1.0,
        checker: bool = True,
    ) -> None:
        """``checker=False``: no thread; the caller calls ``check`` (tests, with their own clock)."""
        self._expected, self._on_stale = expected, on_stale
        self._checker = checker
        self.window_s, self.min_rows, self._check_s = window_s, min_rows, check_s
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def observe(self, key: str, rows: int, escalated: int, now: float | None = None) -> None:
        """Count one served query of cascade ``key`` (engine: from ``served_by.cascade``)."""
        at = time.monotonic() if now is None else now
        with self._lock:
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track()
            track.window.append((at, rows, escalated))
            track.rows += rows
            track.escalated += escalated
            track.total_rows += rows
            track.total_escalated += escalated
        if self._thread is None and self._checker:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="cascade-drift", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the checker thread."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._check_s):
            try:
                self.check()
            except Exception:  # a failed read of the catalog must not end drift tracking
                log.exception("cascade drift check failed")

    def check(self, now: float | None = None) -> list[str]:
        """Trim windows, compare shares with their intervals, mark what stayed outside; the keys marked now."""
        at = time.monotonic() if now is None else now
        marked = []
        for key in list(self._tracks):
            track = self._tracks[key]
            if track.stale:
                continue
            if track.expected is None:
                track.expected = self._expected(key)  # off the query path: the catalog is read here
                if track.expected is None:
                    continue
            with self._lock:
                while track.window and track.window[0][0] < at - self.window_s:
                    _, rows, escalated = track.window.popleft()
                    track.rows -= rows
                    track.escalated -= escalated
                rows, escalated = track.rows, track.escalated
            if rows < self.min_rows:
                track.outside_since = None
                continue
            share = escalated / rows
            low, high = _widened(track.expected, share, rows)
            if low <= share <= high:
                track.outside_since = None
                continue
            if track.outside_since is None:
                track.outside_since = at
                continue
            if at - track.outside_since >= self.window_s:
                track.stale = True
                marked.append(key)
                numbers = {
                    "live_escalation_share": round(share, 4),
                    "rows": rows,
                    "window_s": self.window_s,
                    "expected_interval": [round(v, 4) for v in track.expected],
                    "accepted_interval": [round(low, 4), round(high, 4)],
                }
                log.warning("cascade %s is stale: %s", key, numbers, extra={"event": "cascade_stale", "cascade": key})
                self._on_stale(key, numbers)
        return marked

    def reset(self, key: str) -> None:
        """Forget ``key`` (recalibrated or rebuilt): its next queries are tracked afresh."""
        with self._lock:
            self._tracks.pop(key, None)

    def status(self, key: str) -> dict[str, Any] | None:
        """What is known of cascade ``key``: the share over the window and since start, its interval, stale."""
        track = self._tracks.get(key)
        if track is None:
            return None
        return {
            "rows_in_window": track.rows,
            "escalation_share": round(track.escalated / track.rows, 4) if track.rows else None,
            "rows_total": track.total_rows,
            "escalation_share_total": round(track.total_escalated / track.total_rows, 4) if track.total_rows else None,
            "expected_interval": list(track.expected) if track.expected else None,
            "outside_since_s": round(time.monotonic() - track.outside_since, 1) if track.outside_since else None,
            "stale": track.stale,
        }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``status`` of every cascade that has served (``/v1/stats``)."""
        return {key: status for key in sorted(self._tracks) if (status := self.status(key)) is not None}


def _widened(expected: Interval, share: float, rows: int) -> Interval:
    """The validation interval widened by two standard errors of a live share over ``rows`` rows: a share that
    is only noisy never leaves it (200 rows at 30% escalation: +-6.5 points)."""
    margin = 2.0 * math.sqrt(max(share * (1.0 - share), 1e-6) / rows)
    return expected[0] - margin, expected[1] + margin


def catalog_monitor(
    metadata: MetadataStore,
    submit: Callable[..., None] | None,
    *,
    window_s: float,
    min_rows: int,
) -> CascadeMonitor:
    """A monitor wired to the catalog: intervals read from the kept cascade's decision, a stale cascade marked
    ``stale`` (not selected) with a ``stale`` decision, and a ``recalibrate_cascade`` task queued (``submit``:
    the job runner's, when this process has one)."""

    def expected(key: str) -> Interval | None:
        model = metadata.get_model(key.split("/", 1)[0])
        if model is None:
            return None
        for decision in metadata.list_cascade_decisions(model.task):
            interval = decision.numbers.get("escalation_interval")
            if decision.kept and decision.variant == key and interval:
                return float(interval[0]), float(interval[1])
        return None

    def on_stale(key: str, numbers: dict[str, Any]) -> None:
        model_name, variant_name = key.split("/", 1)
        model = metadata.get_model(model_name)
        if model is None:
            return
        reason = (
            f"stale: live escalation share {numbers['live_escalation_share']:.1%} over {numbers['rows']} rows left "
            f"{numbers['accepted_interval']} for {numbers['window_s']:g} s; recalibrating on the stored validation set"
        )
        metadata.set_variant_status(model_name, variant_name, VariantStatus.STALE, reason=reason)
        metadata.add_cascade_decision(
            CascadeDecisionInfo(model.task, model.owner, "*", key, False, reason, numbers, variant=key, kind="stale")
        )
        if submit is not None:
            submit("recalibrate_cascade", model_name=model_name, variant_name=variant_name)

    return CascadeMonitor(expected, on_stale, window_s=window_s, min_rows=min_rows)
