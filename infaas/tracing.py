"""OpenTelemetry traces: one query is one trace, from the front-end's HTTP span to a remote worker's run.

Off by default. The standard ``OTEL_*`` environment turns it on: ``OTEL_TRACES_EXPORTER`` (``otlp`` or
``console``; ``none`` keeps it off) or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), exported over OTLP/HTTP (protobuf) in batches; ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*`` and ``OTEL_TRACES_SAMPLER`` are honoured as the SDK reads them.

Spans of a query: the FastAPI instrumentation's server span, then ``parse``, ``select``, ``run`` (with a
``queue`` child: the wait for a replica the worker reports) and ``account``. ``run`` is the current span while
a remote worker is called, so the W3C ``traceparent`` header sent to it (``inject``) makes the worker's server
span, and its own ``run`` and ``queue``, children of the front-end's ``run``.

When off, the serving path creates no span object and asks no provider: callers test ``ENABLED`` (a module
global, False until ``configure`` succeeds) once per query and take the untraced path. The test costs
8-11 ns against a 107 µs in-process query (benchmarks/tracing_and_logs_cost.py). Tracing on costs about
140-360 µs per query on a 2-core host (six spans, the SDK's batch processor): an operator's choice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

ENABLED = False  # read by the hot paths; only ``configure`` sets it
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces (an exporter, or an OTLP endpoint to send them to)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER")
    if exporter is not None:
        return exporter.strip().lower() not in {"", "none"}
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter_from_env(environ: Mapping[str, str]) -> SpanExporter:
    """The exporter ``OTEL_TRACES_EXPORTER`` names (default ``otlp``); a name this build lacks is a ValueError."""
    name = (environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: infaas exports http/protobuf")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*


def configure(service_name: str, exporter: SpanExporter | None = None, *, batched: bool = False) -> bool:
    """Turn tracing on for this process when the environment asks for it (or ``exporter`` is given: tests pass
    the SDK's in-memory exporter, exported span by span unless ``batched``); whether it is on.

    ``service_name`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` overrides it). The provider is this
    module's own, not the global one: FastAPI's native telemetry asks the global provider on every request.
    """
    global ENABLED, _provider, _tracer
    if exporter is None:
        if not wanted():
            return False
        processor: SimpleSpanProcessor | BatchSpanProcessor = BatchSpanProcessor(_exporter_from_env(os.environ))
    else:
        processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    if _provider is not None:
        _provider.shutdown()
    _provider = TracerProvider(resource=Resource.create(named))
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("infaas")
    ENABLED = True
    return True


def shutdown() -> None:
    """Flush and stop exporting (tests, and a process that ends); tracing is off afterwards."""
    global ENABLED, _provider, _tracer
    ENABLED = False
    _tracer = trace.NoOpTracer()
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def tracer() -> trace.Tracer:
    """The tracer of infaas's spans (a no-op one while tracing is off)."""
    return _tracer


def instrument(app: object) -> None:
    """Give a FastAPI app server spans that continue an incoming ``traceparent``, when tracing is on."""
    if not ENABLED:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, exclude_spans=["receive", "send"])


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's W3C ``traceparent`` (and ``tracestate``) to outgoing HTTP headers."""
    propagate.inject(headers)


def record_run(span: trace.Span, *, started_ns: int, queue_ms: float, service_ms: float, batch: int) -> None:
    """Describe a finished model run on ``span`` and add its ``queue`` child: the wait for a replica, which
    the worker measures and reports (it starts when the run was asked for)."""
    span.set_attributes({"infaas.queue_ms": queue_ms, "infaas.service_ms": service_ms, "infaas.batch": batch})
    queued = _tracer.start_span("queue", context=trace.set_span_in_context(span), start_time=started_ns)
    queued.end(end_time=started_ns + int(queue_ms * 1e6))


def worker_run(*, started_ns: int, queue_ms: float, service_ms: float, batch: int, variant: str) -> None:
    """A remote worker's ``run`` span (and its ``queue``), from when the query arrived until now, as a child
    of the current (server) span."""
    span = _tracer.start_span("run", start_time=started_ns, attributes={"infaas.variant": variant})
    record_run(span, started_ns=started_ns, queue_ms=queue_ms, service_ms=service_ms, batch=batch)
    span.end()


def trace_id() -> str | None:
    """The current trace's id as 32 hex digits, if a span is being recorded (log lines carry it)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def now_ns() -> int:
    """Wall-clock nanoseconds, the time base of span start and end times."""
    return time.time_ns()
