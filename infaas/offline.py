"""Offline (batch) jobs: run a whole input file through the cheapest variant that is accurate enough.

Offline queries have no per-request latency SLO, so the choice is about cost: among the ready variants
the job may use that reach its accuracy floor (``infaas.accuracy``: the same accuracy, read in the same metric,
as online queries), take the one with the lowest cost per sample at its
best-throughput profiled batch size. A deadline, when given, narrows the choice to variants whose
profile says they finish in time; when none does, the job still runs on the fastest accurate variant
and the job row carries a note saying the deadline will probably be missed (a late result is more
useful than none, and the caller can see why).

``run_offline_job`` is idempotent because Celery (``acks_late``) may deliver it twice: a job that is
``done`` is left alone, and a job whose result object already exists is only marked done.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infaas import array_files
from infaas.accuracy import Accuracy, accuracy_of, floor_metric
from infaas.array_files import ArrayFileError, ArrayFileTooLarge
from infaas.catalog import ModelInfo, VariantInfo
from infaas.db.models import VariantStatus
from infaas.errors import BadRequest, InvalidInput, Unprocessable
from infaas.runtime import available_providers, open_session
from infaas.scratch import scratch_dir
from infaas.selector import typical_ms
from infaas.services import Services
from infaas.tensors import TensorSpec

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # progress writes are throttled so a fast job does not hammer the database


class JobStatus:
    """Lifecycle of an offline job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobInputError(BadRequest):
    """The job's input does not fit the model (refused at submission, or the job's error when it runs)."""

    code = "invalid_job_input"


class NoVariant(Unprocessable):
    """No ready variant the job may use reaches its accuracy floor."""

    code = "no_variant"


def result_key(job_id: str) -> str:
    """Where a job's outputs are stored."""
    return f"jobs/{job_id}/result.npz"


# -- input ---------------------------------------------------------------------------------------


def read_arrays(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (named ``inputs``) or ``.npz`` file, told apart by content, not name.

    A job input is untrusted data: pickles are refused, and an ``.npz`` is refused (``ArrayFileTooLarge``,
    413) when its headers say it expands past ``max_bytes``, before anything is inflated -- a 498 KB
    upload holding 2M x 64 float32 zeros took the server from 232 to 913 MB. A ``.npy`` is memory-mapped.
    """
    try:
        return array_files.read_arrays(path, max_bytes)
    except ArrayFileError as exc:
        raise JobInputError(f"the input is not a readable .npy or .npz file: {exc}") from exc


def input_layout(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """Stand-ins for the arrays of an input file, with their dtypes and shapes but no data, for ``match_inputs``.

    Checking a job at submission needs only what the headers say, so the API never inflates an input
    (each stand-in is a zero broadcast to the declared shape: no memory). The data is still streamed
    through once, so an archive that does not decompress as declared is refused now, not by the worker.
    """
    try:
        headers = array_files.read_headers(path, max_bytes, verify_data=True)
    except ArrayFileError as exc:
        raise JobInputError(f"the input is not a readable .npy or .npz file: {exc}") from exc
    return {name: np.broadcast_to(np.zeros((), h.dtype), h.shape) for name, h in headers.items()}


def match_inputs(arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Map input arrays onto a model's inputs, checking names, dtypes and shapes.

    A single-input model also takes an array named ``inputs`` (which is what a ``.npy`` holds). Each
    array must fit ``TensorSpec.conform`` for samples (the first axis counts samples; float64 feeds a
    float32 input). Only an empty slice is conformed here, so a large input is neither read nor converted
    when a job is submitted; ``_run_batches`` conforms each batch as it runs.
    """
    arrays = dict(arrays)
    if len(specs) == 1 and specs[0].name not in arrays and "inputs" in arrays:
        arrays[specs[0].name] = arrays.pop("inputs")
    matched: dict[str, np.ndarray] = {}
    count: int | None = None
    for spec in specs:
        name = spec.name
        if name not in arrays:
            raise JobInputError(
                f"the input has no array {name!r}; name .npz arrays after the model inputs "
                f"({', '.join(s.name for s in specs)})"
            )
        array = arrays[name]
        try:
            spec.conform(array[:0] if array.ndim else array, samples=True)
        except InvalidInput as exc:
            raise JobInputError(str(exc)) from exc
        if count is not None and array.shape[0] != count:
            raise JobInputError("the input arrays disagree on the number of samples")
        count = int(array.shape[0])
        matched[name] = array
    if not count:
        raise JobInputError("the input holds no samples")
    return matched


# -- choice --------------------------------------------------------------------------------------


def cost_per_sample(
    hardware: str, threads: int, cores: int, service_ms: float, batch: int, prices: Mapping[str, float]
) -> float:
    """Dollars per sample of running batches of ``batch`` that each take ``service_ms``.

    A CPU variant holds ``threads`` cores (all ``cores`` of the worker when ``threads`` is 0), each priced
    as ``cpu-core``; any other hardware holds one unit priced under its own name (e.g. ``gpu``). This is
    the same hardware accounting as the online selector's ``query_cost``, divided over the batch.
    """
    if hardware == "cpu":
        per_hour = prices.get("cpu-core", 0.0) * (threads or cores)
    else:
        per_hour = prices.get(hardware, prices.get(f"{hardware}-core", 0.0))
    return per_hour * (service_ms / 3_600_000.0) / max(batch, 1)


@dataclass(frozen=True)
class JobPlan:
    """A variant at its best-throughput batch, with what running the job on it would cost and take."""

    model: ModelInfo
    variant: VariantInfo
    batch: int
    service_ms: float
    load_ms: float
    accuracy: Accuracy
    cost_per_sample: float
    estimated_s: float

    @property
    def key(self) -> str:
        """``model/variant``."""
        return self.variant.key


def plan_variant(
    model: ModelInfo, variant: VariantInfo, samples: int, cores: int, prices: Mapping[str, float]
) -> JobPlan:
    """Cost and duration of ``samples`` on ``variant`` at its highest-throughput profiled batch size."""
    best = max(variant.profiles, key=lambda p: (p.throughput_per_s, -p.batch_size))
    batches = math.ceil(max(samples, 1) / best.batch_size)
    service_ms = typical_ms(variant, best)  # a cascade's mean, not the p50 of its cheap stage alone
    return JobPlan(
        model=model,
        variant=variant,
        batch=best.batch_size,
        service_ms=service_ms,
        load_ms=best.load_ms,
        accuracy=accuracy_of(model, variant),
        cost_per_sample=cost_per_sample(variant.hardware, variant.threads, cores, service_ms, best.batch_size, prices),
        estimated_s=(best.load_ms + batches * service_ms) / 1000.0,
    )


def best_accuracy(plans: Sequence[JobPlan], metric: str | None) -> JobPlan | None:
    """The most accurate plan in ``metric`` (for the "best available is ..." message)."""
    known = [p for p in plans if p.accuracy.value is not None and p.accuracy.metric == metric]
    return max(known, key=lambda p: p.accuracy.value or 0.0) if known else None


def choose_plan(plans: Sequence[JobPlan], min_accuracy: float, deadline_s: float | None) -> tuple[JobPlan, str | None]:
    """The cheapest accurate plan that meets the deadline; returns it with a note when it will be late.

    Raises ``NoVariant`` naming the best available accuracy when no plan reaches ``min_accuracy``.
    """
    metric = floor_metric((p.model.name, p.accuracy) for p in plans)
    accurate = [p for p in plans if p.accuracy.reaches(min_accuracy, metric)]
    if not accurate:
        best = best_accuracy(plans, metric)
        if best is not None:
            a = best.accuracy
            detail = f"; the best available is {best.key} at {a.value:.3f} ({a.metric}, {a.source})"
        else:
            detail = "; no variant has a known accuracy (register labels in validation.npz, or a declared accuracy)"
        raise NoVariant(f"no ready variant reaches accuracy {min_accuracy}{detail}")
    cheapest = sorted(accurate, key=lambda p: (p.cost_per_sample, p.estimated_s))
    if deadline_s is None:
        return cheapest[0], None
    in_time = [p for p in cheapest if p.estimated_s <= deadline_s]
    if in_time:
        return in_time[0], None
    fastest = min(accurate, key=lambda p: (p.estimated_s, p.cost_per_sample))
    return fastest, (
        f"deadline {deadline_s:g}s will probably be missed: the fastest accurate variant {fastest.key} "
        f"needs about {fastest.estimated_s:.1f}s by its profile"
    )


def job_models(services: Services, model_name: str | None, task: str | None, owner: str) -> list[ModelInfo]:
    """The models a job may use: the named one, or every model of the task ``owner`` owns or that is public.

    The API (when accepting) and the worker (when choosing) both call this, so they apply one rule. A
    named model's visibility is checked by the API before the job exists.
    """
    if model_name:
        model = services.metadata.get_model(model_name)
        return [model] if model is not None else []
    return [m for m in services.metadata.list_models() if m.task == task and (m.public or m.owner == owner)]


def ready_variants(models: Sequence[ModelInfo]) -> list[tuple[ModelInfo, VariantInfo]]:
    """The ready, profiled variants of ``models``."""
    return [(m, v) for m in models for v in m.variants if v.status == VariantStatus.READY and v.profiles]


def _runnable_here(variant: VariantInfo) -> bool:
    """Whether this process's ONNX Runtime offers every execution provider the variant needs."""
    return set(variant.providers) <= set(available_providers())


# -- running -------------------------------------------------------------------------------------


def _run_batches(
    services: Services, job_id: str, plan: JobPlan, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run every sample through the plan's variant in batches, writing progress to the job row."""
    variant = plan.variant
    artifact = services.store.local_path(variant.artifact_key or plan.model.artifact_key)
    session = open_session(artifact, variant.providers, variant.threads, shapes=plan.model.input_shapes)
    specs = {s.name: s for s in plan.model.inputs}
    fixed = {specs[name].shape[0] for name in inputs if specs[name].shape[0] > 0}
    # A model with a fixed batch axis gets exactly that many rows; its last batch is zero-padded.
    batch = min(fixed) if fixed else plan.batch
    total = next(iter(inputs.values())).shape[0]
    output_names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    last_report = time.monotonic()
    for start in range(0, total, batch):
        feed = {
            name: np.ascontiguousarray(specs[name].conform(a[start : start + batch], samples=True))
            for name, a in inputs.items()
        }
        rows = next(iter(feed.values())).shape[0]
        if fixed and rows < batch:
            feed = {n: np.concatenate([a, np.zeros((batch - rows, *a.shape[1:]), a.dtype)]) for n, a in feed.items()}
        for name, value in zip(output_names, session.run(output_names, feed), strict=True):
            chunks[name].append(value[:rows])
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S:
            services.metadata.update_job(job_id, progress=round(min(start + rows, total) / total, 4))
            last_report = now
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _store_result(services: Services, key: str, outputs: dict[str, np.ndarray]) -> None:
    """Write the outputs as one ``.npz`` (via a temp file, so large results never sit in memory twice)."""
    with tempfile.TemporaryDirectory(dir=scratch_dir(services.settings), prefix="job-result-") as tmp:
        path = Path(tmp) / "result.npz"
        np.savez(path, **outputs)  # type: ignore[arg-type]
        services.store.put_file(key, path)


def run_offline_job(services: Services, job_id: str) -> None:
    """Run one offline job to completion (the ``offline_job`` background task); safe to run twice."""
    job = services.metadata.get_job(job_id)
    if job is None:
        log.warning("offline job %s does not exist; nothing to do", job_id)
        return
    if job.status == JobStatus.DONE:
        return
    key = result_key(job_id)
    if services.store.exists(key):
        services.metadata.update_job(job_id, status=JobStatus.DONE, progress=1.0, result_key=key)
        return
    services.metadata.update_job(job_id, status=JobStatus.RUNNING, progress=0.0, error=None)
    try:
        arrays = read_arrays(services.store.local_path(job.input_key), array_files.array_bound(services.settings))
        plans: list[JobPlan] = []
        rejected: list[str] = []
        for model, variant in ready_variants(job_models(services, job.model_name, job.task, job.owner)):
            if not _runnable_here(variant):
                continue
            try:
                samples = int(next(iter(match_inputs(arrays, model.inputs).values())).shape[0])
            except JobInputError as exc:
                rejected.append(f"{model.name}: {exc}")
                continue
            plans.append(
                plan_variant(model, variant, samples, services.settings.worker_cores, services.settings.prices)
            )
        if not plans:
            reason = "; ".join(dict.fromkeys(rejected)) or "no ready variant can run on this worker"
            raise JobInputError(f"no usable variant for this input: {reason}")
        plan, note = choose_plan(plans, job.min_accuracy, job.deadline_s)
        log.info("job %s runs on %s at batch %d (%.3g $/sample)", job_id, plan.key, plan.batch, plan.cost_per_sample)
        services.metadata.update_job(job_id, variant=plan.key, error=note)
        outputs = _run_batches(services, job_id, plan, match_inputs(arrays, plan.model.inputs))
        _store_result(services, key, outputs)
        services.metadata.update_job(job_id, status=JobStatus.DONE, progress=1.0, result_key=key)
    # InvalidInput: a batch out of its dtype's range; ArrayFileTooLarge: an input past this worker's bound.
    except (JobInputError, InvalidInput, NoVariant, ArrayFileTooLarge) as exc:
        services.metadata.update_job(job_id, status=JobStatus.FAILED, error=str(exc))
    except Exception as exc:
        log.exception("offline job %s failed", job_id)
        services.metadata.update_job(job_id, status=JobStatus.FAILED, error=f"internal error: {exc}")


def offline_job_given_up(services: Services, reason: str, job_id: str) -> None:
    """The job could not be run to the end (its processes kept dying): it is ``failed`` with the reason."""
    job = services.metadata.get_job(job_id)
    if job is not None and job.status != JobStatus.DONE:
        services.metadata.update_job(job_id, status=JobStatus.FAILED, error=reason)
