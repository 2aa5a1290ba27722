"""Which thread runs a query: the event loop's own, or the thread pool.

An async server pays about 50–100 µs for each hop to the thread pool and back, which for a small model
is more than selecting a variant and running it. So a query whose work is short runs on the event
loop's thread, and everything that may block (a large body to parse, a queued or cold instance, a
model that takes a while) goes to the pool. Both the front-end's query engine and a remote worker's
HTTP server decide here, with the same two thresholds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread

P = ParamSpec("P")
R = TypeVar("R")

# A body up to this size is parsed, validated and planned on the event loop (a 64 KiB JSON body parses in
# well under a millisecond); larger ones are parsed in the pool.
INLINE_BODY_BYTES = 64 * 1024

# A run expected to take this long on an idle, loaded instance may run on the event loop's thread;
# anything slower would stall every other request the loop serves.
INLINE_MAX_MS = 1.0


def body_is_small(body_bytes: int) -> bool:
    """Whether a request body of this size is parsed and planned on the event loop."""
    return body_bytes <= INLINE_BODY_BYTES


def run_is_short(expected_ms: float) -> bool:
    """Whether a model run expected to take ``expected_ms`` may run on the event loop."""
    return expected_ms <= INLINE_MAX_MS


async def in_pool(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking call in the thread pool."""
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


async def short_inline_else_pool(expected_ms: float, try_now: Callable[[], R | None], blocking: Callable[[], R]) -> R:
    """``try_now()`` on this thread when the run is short (it returns ``None`` having done nothing when the
    instance is busy), else — or then — ``blocking()`` in the pool."""
    if run_is_short(expected_ms):
        result = try_now()
        if result is not None:
            return result
    return await in_pool(blocking)
