"""Failed console sign-ins per client address: past a few in a window, wrong keys get 429.

Admin keys are 256-bit random, so guessing one is hopeless anyway; the throttle is there so that a
script hammering the form shows up as 429s with ``Retry-After``. It counts and blocks failures only: a
correct admin key always signs in, even from a throttled address, or anyone sharing the admin's address
(a NAT, a proxy, another local user) could lock the admin out with five wrong keys (issue 14). So every
attempt still costs one key check (a SHA-256 and an indexed lookup); that is the price of no lockout.

A correct key does not clear the address's record: failures age out of the window by themselves, and
clearing would hand a guesser who shares the admin's address a fresh budget at every admin sign-in.
Attempts refused with 429 are not recorded, so a hammering script cannot grow the record.

The address is the socket peer: ``infaas serve`` believes ``X-Forwarded-For`` only from the proxies
named in ``INFAAS_TRUSTED_PROXIES`` (with uvicorn's default, any local client could name a fresh address
for every attempt). It is per process, like the console's sessions.
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

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        horizon = self._clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(self._failures) > 10_000:  # bound memory under a spray of addresses: forget the quiet ones
            for stale in [a for a, f in self._failures.items() if not f and a != address]:
                del self._failures[stale]
        return failures
