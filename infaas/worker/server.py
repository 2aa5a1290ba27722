"""The worker process's HTTP app: a ``LocalWorker`` behind infer/load/unload/replica/status routes.

The worker registers itself in the shared live state with its base URL, so every front-end can find
it, and heartbeats; if its registration vanished (it was paused past the TTL, or Redis restarted) it
registers again and re-reports its instances. Variants are loaded from the shared model store on
demand: a query for a variant the worker has not seen gets 409 ``need-variant`` and the front-end
sends the variant's description once (see ``infaas.worker.remote``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from infaas import offload, tracing
from infaas.catalog import VariantInfo
from infaas.errors import InvalidInput
from infaas.live_state.base import InstanceState, LiveState
from infaas.metrics import WorkerCollector, WorkerGauges, free_cores
from infaas.selector import ProfileCurve
from infaas.worker.remote import (
    BAD_INPUT,
    FRAME_TYPE,
    NEED_VARIANT,
    OUT_OF_MEMORY,
    FrameError,
    decode_frame,
    encode_frame,
    variant_from_json,
)
from infaas.worker.worker import LocalWorker, OutOfMemory, WorkerError

log = logging.getLogger(__name__)

# How often a worker process sends its changed queue depths to Redis (its live state's flush interval; front-ends
# keep 2 ms for their own writes). One report is one script call of 16-26 µs of Redis CPU (``benchmarks/scale.py``),
# so at the 2 ms front-ends use, 1,000 busy workers would need 8-13 Redis cores, and Redis has one: at 100 ms they
# take 16-26% of it, leaving the rest to heartbeats (1.6%) and the front-ends. Selection stays current where it
# matters most: each front-end counts the rows it has itself sent to a worker at once (``note_local_depth``), so
# only other front-ends' load is up to 100 ms old.
DEPTH_REPORT_S = 0.1


class WorkerService:
    """A ``LocalWorker`` plus what a remote worker adds: its address in live state and known variants."""

    def __init__(self, worker: LocalWorker, live: LiveState, address: str, heartbeat_s: float) -> None:
        self.worker = worker
        self.live = live
        self.address = address
        self._heartbeat_s = heartbeat_s
        self._variants: dict[str, tuple[VariantInfo, ProfileCurve]] = {}
        self._variants_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- registration ---------------------------------------------------------------------------
    def _register(self) -> None:
        status = self.worker.status()
        self.live.register_worker(self.worker.registration(self.address))  # with its hardware and GPU
        log.info(
            "worker %s joined at %s",
            self.worker.id,
            self.address,
            extra={"event": "worker_join", "worker": self.worker.id, "address": self.address},
        )
        for inst in status.instances:
            self.live.set_instance(InstanceState(self.worker.id, inst.variant_key, inst.replicas, inst.memory_mb))

    def start(self) -> None:
        """Register and start heartbeating."""
        self._register()
        self._thread = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                if any(w.id == self.worker.id for w in self.live.workers()):
                    self.live.heartbeat(self.worker.id, self.worker.memory_used_mb)
                else:
                    self._register()
            except Exception:  # Redis away for a moment: keep serving, try again next beat
                continue

    def stop(self) -> None:
        """Stop heartbeating, unload everything and leave live state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.worker.stop()
        log.info("worker %s left", self.worker.id, extra={"event": "worker_leave", "worker": self.worker.id})

    def gauges(self) -> WorkerGauges:
        """This worker's resources for its ``GET /metrics``: what it holds, read from itself."""
        status = self.worker.status()
        threads = {key: variant.threads for key, (variant, _) in list(self._variants.items())}
        held = ((i.replicas, threads.get(i.variant_key, 0)) for i in status.instances)
        return WorkerGauges(
            worker=status.id,
            state="ready",  # serving this scrape; stale or draining is what the front-ends' live state says
            instances=len(status.instances),
            replicas=sum(i.replicas for i in status.instances),
            memory_used_mb=status.memory_used_mb,
            memory_budget_mb=status.memory_budget_mb,
            cores=status.cores,
            free_cores=free_cores(status.cores, held),
        )

    # -- variants -------------------------------------------------------------------------------
    def known(self, key: str, variant_id: int) -> tuple[VariantInfo, ProfileCurve] | None:
        """The variant description last sent for ``key`` (with its curve), if it is the same variant row."""
        found = self._variants.get(key)
        return found if found is not None and found[0].id == variant_id else None

    def remember(self, variant: VariantInfo) -> None:
        """Keep a variant's description; a different row under the same key (rebuilt) replaces the old one."""
        with self._variants_lock:
            previous = self._variants.get(variant.key)
            self._variants[variant.key] = (variant, ProfileCurve.of(variant))
        if previous is not None and previous[0] != variant:
            self.worker.unload(variant.key)


def _error(exc: WorkerError) -> HTTPException:
    # Out of memory is tagged so the front-end's engine can move the query to the next placement.
    headers = {"x-infaas-error": OUT_OF_MEMORY} if isinstance(exc, OutOfMemory) else None
    return HTTPException(409, str(exc), headers=headers)


def create_worker_app(service: WorkerService) -> FastAPI:
    """The worker's HTTP API; the lifespan registers it and, on shutdown, unregisters it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="infaas worker", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    tracing.instrument(app)  # server spans continue the front-end's traceparent (when tracing is on)
    worker = service.worker

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"id": worker.id, "status": "ok"}

    @app.post("/infer/{model}/{name}")
    async def infer(model: str, name: str, request: Request) -> Response:
        try:
            meta, inputs = decode_frame(await request.body())
        except FrameError as exc:
            raise HTTPException(400, str(exc)) from None
        found = service.known(f"{model}/{name}", int(meta.get("variant_id", -1)))
        if found is None:
            return Response(status_code=409, headers={"x-infaas-error": NEED_VARIANT})
        variant, curve = found
        started_ns = tracing.now_ns() if tracing.ENABLED else 0
        remaining = meta.get("remaining_ms")
        deadline = None if remaining is None else time.monotonic() + float(remaining) / 1000.0
        # Like the front-end (one rule, ``infaas.offload``): a short run on an idle replica skips the pool.
        rows = max((int(a.shape[0]) for a in inputs.values() if a.ndim), default=1)
        try:
            result = await offload.short_inline_else_pool(
                curve.service_ms(rows),
                lambda: worker.try_infer_now(variant, inputs),
                lambda: worker.infer(variant, inputs, deadline),
            )
        except WorkerError as exc:
            raise _error(exc) from None
        except InvalidInput as exc:  # the model failed on these values: the front-end answers 400
            return Response(exc.message.encode(), status_code=400, headers={"x-infaas-error": BAD_INPUT})
        if tracing.ENABLED:
            tracing.worker_run(
                started_ns=started_ns,
                queue_ms=result.queue_ms,
                service_ms=result.service_ms,
                batch=result.batch,
                variant=variant.key,
            )
        body = encode_frame(
            {"queue_ms": result.queue_ms, "service_ms": result.service_ms, "batch": result.batch}, result.outputs
        )
        return Response(body, media_type=FRAME_TYPE)

    async def _variant(request: Request) -> VariantInfo:
        try:
            return variant_from_json(await request.body())
        except (TypeError, ValueError, KeyError) as exc:
            raise HTTPException(400, f"not a variant description: {exc}") from None

    @app.post("/load")
    async def load(request: Request) -> dict[str, str]:
        variant = await _variant(request)
        service.remember(variant)
        try:
            await run_in_threadpool(worker.load, variant)
        except WorkerError as exc:
            raise _error(exc) from None
        return {"loaded": variant.key}

    @app.post("/unload")
    def unload(body: dict[str, str]) -> dict[str, bool]:
        return {"unloaded": worker.unload(body["variant_key"])}

    @app.post("/replicas/add")
    async def add_replica(request: Request) -> dict[str, int]:
        variant = await _variant(request)
        service.remember(variant)
        try:
            return {"replicas": await run_in_threadpool(worker.add_replica, variant)}
        except WorkerError as exc:
            raise _error(exc) from None

    @app.post("/replicas/remove")
    def remove_replica(body: dict[str, str]) -> dict[str, int]:
        return {"replicas": worker.remove_replica(body["variant_key"])}

    @app.post("/max_batch")
    def set_max_batch(body: dict[str, str | int]) -> dict[str, int]:
        return {"max_batch": worker.set_max_batch(str(body["variant_key"]), int(body["max_batch"]))}

    @app.get("/status")
    def status() -> Response:
        return Response(orjson.dumps(asdict(worker.status())), media_type="application/json")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(WorkerCollector(service.gauges))

    @app.get("/metrics")
    def metrics() -> Response:
        """This worker's instances, replicas, memory and free cores in Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
