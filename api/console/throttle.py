"""Failed console sign-ins per client address: past a few in a window, the next attempt waits.

Admin keys are 256-bit random, so guessing one is hopeless anyway; the throttle is there so that a
script hammering the form costs nothing (no key hashing, no database lookup) and shows up as 429s.
It is per process, like the console's sessions; a front-end behind a load balancer sees the balancer's
address unless the server is told to trust forwarded headers (uvicorn ``--proxy-headers``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class SignInThrottle:
    """At most ``max_failures`` failed sign-ins per address within ``window_s``."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window_s <= 0:
            raise ValueError("the sign-in throttle needs max_failures ≥ 1 and window_s > 0")
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        with self._lock:
            failures = self._recent(address)
            if len(failures) < self.max_failures:
                return 0
            return max(1, math.ceil(failures[0] + self.window_s - self._clock()))

    def failed(self, address: str) -> None:
        """Note one failed attempt."""
        with self._lock:
            self._recent(address).append(self._clock())

    def succeeded(self, address: str) -> None:
        """A good key clears the address's record."""
        with self._lock:
            self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(self._failures) > 10_000:  # bound memory under a spray of addresses: forget the quiet ones
            for stale in [a for a, f in self._failures.items() if not f and a != address]:
                del self._failures[stale]
        return failures
