"""The interpreter's thread switch interval in a serving process (``INFAAS_SWITCH_INTERVAL_MS``).

A model replica's thread releases the GIL inside ``session.run`` and needs it back to hand the outputs over;
meanwhile the request threads decode JSON bodies and the event loop runs HTTP, all holding the GIL. CPython makes
a thread that wants the GIL wait up to the switch interval (5 ms by default) before the holder is asked to drop
it, so under load the replica sat idle for up to 5 ms after every run while its queue was full: the next run
could not start until the decoding thread let go. Measured with ``infaas serve`` at 16 connections (``wrk``, the
peers benchmark's bodies, 2 cores at load average 3.7-4.5, two A/B rounds of 8 s): all-MiniLM-L6-v2 (dynamic
INT8, one thread) 416 and 437 req/s at 5 ms, 647 and 587 req/s at 0.5 ms, p99 147-167 ms against 40-49 ms, the
server using 1.0-1.1 cores against 1.5; ResNet-18 (296 KB JSON bodies) 183 and 196 against 206 and 197 req/s,
p99 124-212 against 111-127 ms. A shorter interval costs more GIL hand-overs, which at this request rate is well
under the time it returns.
"""

from __future__ import annotations

import sys


def apply(interval_ms: float) -> None:
    """Set this process's switch interval (the setting is validated positive: ``infaas.config``)."""
    sys.setswitchinterval(interval_ms / 1000.0)
