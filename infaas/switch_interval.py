"""The interpreter's thread switch interval in a serving process (``INFAAS_SWITCH_INTERVAL_MS``).

A model replica's thread releases the GIL inside ``session.run`` and needs it back to hand the outputs over;
meanwhile the request threads decode JSON bodies and the event loop runs HTTP, all holding the GIL. CPython makes
a thread that wants the GIL wait up to the switch interval (5 ms by default) before the holder is asked to drop
it, so under load the replica sat idle for up to 5 ms after every run while its queue was full: the next run
could not start until the decoding thread let go.

Measured in one process, paired rounds of 1.5 s alternating the two settings (2 cores at load average 5-6): one
thread running all-MiniLM-L6-v2's dynamic INT8 on one ONNX Runtime thread while three threads decode the peers
benchmark's 296 KB ResNet-18 OIP body: at 5 ms the replica ran 58-81 times a second (median 73), at 0.5 ms
86-195 (median 106), higher in all 6 pairs, with the decoders as fast (median 339 vs 314 decodes/s); 0.1 ms
was slower than 0.5 ms (median 93 vs 128 runs/s, more hand-overs). Through ``infaas serve`` at 16 connections
(``wrk``, MiniLM, 8 s runs) the same A/B was too noisy on the shared host to show it: 5 ms 192-437 req/s
(median 374), 0.5 ms 156-647 (median 376).
"""

from __future__ import annotations

import sys


def apply(interval_ms: float) -> None:
    """Set this process's switch interval (the setting is validated positive: ``infaas.config``)."""
    sys.setswitchinterval(interval_ms / 1000.0)
