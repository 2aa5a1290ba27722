"""What n replicas of a variant serve together, from the profiler's measurement of 1, 2, ... replicas on one worker.

The selector (queueing behind replicas) and the autoscaler (capacity, replicas needed) both assumed n replicas
serve n times one replica's rows/s. Measured on the shared 2-core build host at load average ~20
(``variant_generator.profiler``, ``tests/variant_generator/test_profiler_concurrency.py``), two one-thread
replicas of a small MLP served 0.6-1.3× what one did, and of a tiny one 0.91-0.96× (each run mostly Python holding
the GIL), so the measured figure is used, and an unmeasured variant keeps the linear assumption.
"""

from __future__ import annotations

from collections.abc import Sequence


def speedups(replica_throughput: Sequence[float]) -> tuple[float, ...]:
    """Rows/s of 1, 2, ... replicas together, relative to one replica's (``()`` when not measured or a count served
    nothing). k replicas are never read as more than k: above that is measurement noise, not a free core."""
    if len(replica_throughput) < 2 or min(replica_throughput) <= 0:
        return ()
    alone = replica_throughput[0]
    return tuple(min(thr / alone, k) for k, thr in enumerate(replica_throughput, start=1))


def speedup(measured: Sequence[float], replicas: int) -> float:
    """How many single replicas' worth of rows/s ``replicas`` replicas serve (``measured``: ``speedups``).

    Up to the measured count they share one worker's cores as measured; past it, the further replicas are on
    other workers (the autoscaler never gives one worker more replicas than its cores hold), so every full
    group of the measured count serves the measured figure and the rest as that many on their own worker.
    Unmeasured: ``replicas``.
    """
    if not measured or replicas <= 0:
        return float(max(replicas, 0))
    full, rest = divmod(replicas, len(measured))
    return full * measured[-1] + (measured[rest - 1] if rest else 0.0)
