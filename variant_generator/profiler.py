"""Measures a variant on this host: load time, latency and throughput per batch size, memory, accuracy.

These numbers are what the selector trades latency, accuracy and cost on, so they are taken with the
same loader a worker serves with (``infaas.runtime.open_session``: runtime, providers, threads, warm-up)
and bounded by ``settings.profile_runs`` / ``settings.profile_max_seconds`` so that building a small
model takes seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import socket
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

WARMUP_RUNS = 2
MIN_RUNS = 3  # even a slow model gets a p50 that is not a single sample
ACCURACY_BATCH = 64


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


def _time_batch(
    session: Session, feeds: dict[str, np.ndarray], runs: int, budget_s: float
) -> tuple[list[float], float]:
    """Warm runs, then up to ``runs`` timed runs within ``budget_s``; latencies (ms) and elapsed seconds."""
    for _ in range(WARMUP_RUNS):
        session.run(None, feeds)
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < max(runs, MIN_RUNS):
        t0 = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if len(latencies) >= MIN_RUNS and time.perf_counter() - started > budget_s:
            break
    return latencies, time.perf_counter() - started


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
    largest batch ran (clamped at 0): a worker's footprint, not device memory.
    """
    process = psutil.Process()
    _release_freed_memory()
    rss_before = process.memory_info().rss
    t0 = time.perf_counter()
    session = open_session(artifact, providers, threads, shapes=model.input_shapes)
    load_ms = (time.perf_counter() - t0) * 1000.0
    scores = _scores(session, model, data, reference)

    sizes = batch_sizes(model)
    budget_s = settings.profile_max_seconds / len(sizes)
    timings = {size: _time_batch(session, data.batch(size), max(1, settings.profile_runs), budget_s) for size in sizes}
    memory_mb = max(0.0, (process.memory_info().rss - rss_before) / 2**20)
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
            memory_mb=memory_mb,
            accuracy=scores.accuracy,
            accuracy_metric=scores.accuracy_metric,
            fidelity=scores.fidelity,
            fidelity_metric=scores.fidelity_metric,
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
