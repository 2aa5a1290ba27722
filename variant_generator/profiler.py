"""Measures a variant on this host: load time, latency and throughput per batch size, memory, accuracy.

These numbers are what the selector trades latency, accuracy and cost on, so they are taken with the
same loader a worker serves with (``infaas.runtime.open_session``: runtime, providers, threads, warm-up)
and bounded by ``settings.profile_runs`` / ``settings.profile_max_seconds`` so that building a small
model takes seconds.

Throughput under concurrency is measured, not assumed: a CPU variant of ``t`` threads is also run as k = 1 ..
``worker_cores // t`` replicas at once (one session and one thread each, as a worker's ``Instance`` runs
replicas) at every profiled batch size, so 1×2 (the all-cores variant) and 2×1 (two one-thread replicas) on two
cores are both numbers. What a second replica adds depends on the model and on the host: on the shared 2-core
build host at load average ~20, two one-thread replicas of a 1024→2048→3 MLP served 0.6-1.3× one replica's rows/s
and of a 64-wide one 0.91-0.96× (each run mostly Python holding the GIL), not 2×
(``tests/variant_generator/test_profiler_concurrency.py`` prints them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from infaas.accuracy import SYNTHETIC
from infaas.catalog import ModelInfo, ProfileInfo
from infaas.config import Settings
from infaas.runtime import CPU_PROVIDERS, Session, open_session
from variant_generator.accuracy import ValidationSet, accuracy_score, fidelity_score, fixed_batch, predict
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.batch_invariance import is_batch_invariant

WARMUP_RUNS = 2
SCALING_ROUNDS = 3  # replica counts measured in turn this many times (``_replica_throughput``)
MIN_RUNS = 3  # even a slow model gets a p50 that is not a single sample
ACCURACY_BATCH = 64
ROTATION = 64  # distinct batches a timing takes in turn (``_batches``)


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS so the next RSS growth is this variant's, not a reuse of the last's."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


def batch_sizes(model: ModelInfo) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself (or only the batch an input pins)."""
    pinned = fixed_batch(model)
    if pinned is not None:
        return [pinned]
    top, sizes, size = max(1, model.max_batch), [], 1
    while size < top:
        sizes.append(size)
        size *= 2
    return [*sizes, top]


def _batches(data: ValidationSet, size: int) -> list[dict[str, np.ndarray]]:
    """Successive ``size``-row batches of ``data`` (up to ``ROTATION``), which the timed runs take in turn.

    A variant whose work depends on its rows -- a cascade escalates only its unconfident rows
    (``infaas.cascade_session``) -- is then timed on the real split: at batch 1 one fixed row would be either
    always or never escalated. For any other variant every batch costs the same.
    """
    return [data.batch(size, start * size) for start in range(min(ROTATION, max(1, -(-data.rows // size))))]


def _time_batch(
    session: Session, batches: Sequence[dict[str, np.ndarray]], runs: int, budget_s: float
) -> tuple[list[float], float]:
    """Warm runs, then up to ``runs`` timed runs within ``budget_s``, taking ``batches`` in turn; latencies (ms)
    and elapsed seconds."""
    for _ in range(WARMUP_RUNS):
        session.run(None, batches[0])
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < max(runs, MIN_RUNS):
        feeds = batches[len(latencies) % len(batches)]
        t0 = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if len(latencies) >= MIN_RUNS and time.perf_counter() - started > budget_s:
            break
    return latencies, time.perf_counter() - started


def _concurrent_throughput(
    sessions: Sequence[Session], batches: Sequence[dict[str, np.ndarray]], rows: int, budget_s: float
) -> float:
    """Rows/s of ``sessions`` run together, each on its own thread in a loop (over ``batches`` in turn, from its own
    offset) for about ``budget_s``, at least ``MIN_RUNS`` runs each: ``session.run`` releases the GIL, so this is
    how a worker's replicas share its cores. The sessions are warm (``_replica_throughput``)."""
    start = threading.Barrier(len(sessions) + 1)
    stop = threading.Event()
    runs = [0] * len(sessions)

    def loop(i: int, session: Session) -> None:
        start.wait()
        done = 0
        while done < MIN_RUNS or not stop.is_set():
            session.run(None, batches[(i + done) % len(batches)])
            done += 1
        runs[i] = done

    threads = [threading.Thread(target=loop, args=(i, s), daemon=True) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    stop.wait(budget_s)
    stop.set()
    for thread in threads:
        thread.join()
    return rows * sum(runs) / (time.perf_counter() - began)


def _replica_throughput(
    replicas: Sequence[Session], batches: Sequence[dict[str, np.ndarray]], rows: int, budget_s: float
) -> tuple[float, ...]:
    """Rows/s of 1 .. ``len(replicas)`` replicas together, measured side by side: ``SCALING_ROUNDS`` rounds each
    running every count in turn for a share of ``budget_s``, the median per count kept. One replica is measured in
    the same harness, next to the others: on a shared host, two one-thread replicas measured a few seconds after
    one replica's sequential timing read 0.47x it at load average 13 (the host's load had moved in between)."""
    for session in replicas:
        session.run(None, batches[0])  # warm at this batch size: a first run allocates
    measured: list[list[float]] = [[] for _ in replicas]
    for _ in range(SCALING_ROUNDS):
        for k in range(1, len(replicas) + 1):
            measured[k - 1].append(_concurrent_throughput(replicas[:k], batches, rows, budget_s / SCALING_ROUNDS))
    return tuple(float(np.median(rates)) for rates in measured)


def replica_counts(threads: int, cores: int) -> int:
    """How many replicas of ``threads`` threads (0: every core) one worker of ``cores`` cores runs side by side
    before they outnumber its cores: the replica counts the profiler measures (1 .. this)."""
    return max(1, cores // threads) if threads > 0 else 1


def _predict(session: Session, model: ModelInfo, data: ValidationSet) -> np.ndarray:
    pinned = fixed_batch(model)
    batch = pinned or min(ACCURACY_BATCH, max(1, model.max_batch))
    return predict(session, data, batch, pinned=pinned is not None)


@dataclass(frozen=True)
class _Scores:
    accuracy: float | None = None
    accuracy_metric: str | None = None
    fidelity: float | None = None
    fidelity_metric: str | None = None


def _scores(session: Session, model: ModelInfo, data: ValidationSet, reference: np.ndarray | None) -> _Scores:
    """Accuracy against the labels (real ones only) and fidelity to ``reference``, each when there is one."""
    predicted = _predict(session, model, data)
    if predicted.dtype == object:  # e.g. a ZipMap's list of dicts: nothing numeric to compare
        return _Scores()
    accuracy, accuracy_metric = (None, None)
    if data.labels is not None and not data.synthetic:
        accuracy, accuracy_metric = accuracy_score(predicted, data.labels)
    fidelity, fidelity_metric = (None, None)
    if reference is not None:
        fidelity, metric = fidelity_score(predicted, reference, task=model.task)
        fidelity_metric = metric + SYNTHETIC if data.synthetic else metric
    return _Scores(accuracy, accuracy_metric, fidelity, fidelity_metric)


def profile_variant(
    artifact: Path,
    model: ModelInfo,
    *,
    providers: Sequence[str],
    threads: int,
    settings: Settings,
    data: ValidationSet,
    reference: np.ndarray | None = None,
) -> list[ProfileInfo]:
    """One ``ProfileInfo`` per batch size for the artifact loaded with ``providers`` and ``threads``.

    ``data`` is the validation set's scoring rows (or deterministic synthetic inputs when none was registered):
    accuracy is scored against its labels, fidelity against ``reference``, the original model's first output on
    ``data``. ``memory_mb`` is the growth of this process's resident set from before loading to after the
    largest batch ran (clamped at 0): a worker's footprint, not device memory. ``replica_throughput_per_s`` holds
    rows/s of 1 .. ``replica_counts`` replicas serving together on ``settings.worker_cores`` cores (CPU variants;
    empty for others, and when one replica already takes every core).
    """
    process = psutil.Process()
    _release_freed_memory()
    rss_before = process.memory_info().rss
    t0 = time.perf_counter()
    session = open_session(artifact, providers, threads, shapes=model.input_shapes)
    load_ms = (time.perf_counter() - t0) * 1000.0
    scores = _scores(session, model, data, reference)
    invariant = is_batch_invariant(session, model, data)

    sizes = batch_sizes(model)
    counts = replica_counts(threads, settings.worker_cores) if set(providers) <= set(CPU_PROVIDERS) else 1
    # The time is shared by the sequential timing and, when replicas are measured, each replica count per size.
    budget_s = settings.profile_max_seconds / (len(sizes) * (1 + counts if counts > 1 else 1))
    timings = {
        size: _time_batch(session, _batches(data, size), max(1, settings.profile_runs), budget_s) for size in sizes
    }
    memory_mb = max(0.0, (process.memory_info().rss - rss_before) / 2**20)  # one replica's, before the others load
    together: dict[int, tuple[float, ...]] = {size: () for size in sizes}
    if counts > 1:
        replicas = [session] + [
            open_session(artifact, providers, threads, shapes=model.input_shapes) for _ in range(counts - 1)
        ]
        for size in sizes:
            together[size] = _replica_throughput(replicas, _batches(data, size), size, budget_s * counts)
        del replicas
    host, now = socket.gethostname(), datetime.now(UTC)
    del session
    return [
        ProfileInfo(
            batch_size=size,
            threads=threads,
            load_ms=load_ms,
            latency_p50_ms=float(np.percentile(latencies, 50)),
            latency_p99_ms=float(np.percentile(latencies, 99)),
            throughput_per_s=size * len(latencies) / elapsed,
            replica_throughput_per_s=together[size],
            memory_mb=memory_mb,
            accuracy=scores.accuracy,
            accuracy_metric=scores.accuracy_metric,
            fidelity=scores.fidelity,
            fidelity_metric=scores.fidelity_metric,
            batch_invariant=invariant,
            host=host,
            measured_at=now,
        )
        for size, (latencies, elapsed) in timings.items()
    ]


def build_and_profile(
    generator: VariantGenerator,
    ctx: BuildContext,
    built: Path | None,
    *,
    threads: int,
    settings: Settings,
    data: ValidationSet,
    reference: np.ndarray | None,
) -> tuple[Path, list[ProfileInfo]]:
    """``generator``'s artifact (``built`` when another thread count already made it) and its profiles.

    One step of a build, so that a sandboxed build starts one child per variant, not two: each child
    pays for a fresh interpreter and its imports (about 0.3 s).
    """
    artifact = built or generator.build(ctx)
    profiles = profile_variant(
        artifact,
        ctx.model,
        providers=generator.providers,
        threads=threads,
        settings=settings,
        data=data,
        reference=reference,
    )
    return artifact, profiles


def reference_outputs(original: Path, model: ModelInfo, data: ValidationSet) -> np.ndarray:
    """The original model's first output on ``data``: what every variant's fidelity is scored against."""
    return _predict(open_session(original, CPU_PROVIDERS, 0, shapes=model.input_shapes), model, data)
