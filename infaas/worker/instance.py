"""One loaded variant: a session (``runtime.Session``) per replica and an adaptive batching queue.

Fast path: when a replica is free and nobody is waiting, the request runs on the caller's thread,
so an idle instance adds no thread hand-off to ``session.run`` (which releases the GIL).
Otherwise the request is queued and one replica thread gathers a batch: it flushes when the batch
reaches the variant's best profiled batch size (highest throughput) or when waiting longer would
spend the tightest queued request's slack (deadline − now − estimated service time), whichever
comes first; the wait is also capped at one best-batch service time so requests without a deadline
are not held for long. A run takes the waiting requests in order up to that batch, but leaves for the next
run a request that would make a run ending by all its requests' deadlines end after one (``batch_size``).
Multi-row requests are concatenated along axis 0 and split back.

Queue depth is reported (``on_depth``) in rows outstanding, not requests: the selector prices the wait as
the time to drain those rows at this batching, and a queued 64-row request costs 64 times a 1-row one.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from infaas.errors import InvalidInput
from infaas.runtime import Session
from infaas.selector import INVARIANT_BAND, ProfileCurve

# What ONNX Runtime raises when a registered, warmed-up model cannot run on the values it was given (an
# index out of range for a Gather, a Reshape to a shape the data does not fit, an allocation the input
# asks for): the input's fault, so the sender gets a 400 with the runtime's message, not a 500.
_RUN_FAILURES = (Fail, InvalidArgument, RuntimeException)
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class InferResult:
    """Outputs of one request and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_ms: float
    service_ms: float
    batch: int  # rows in the session run this request was part of


def flush_at(pending: Sequence[tuple[float, int, float | None]], max_batch: int, curve: ProfileCurve) -> float | None:
    """The batching rule's flush time for the requests waiting, oldest first, each ``(enqueued, rows, deadline)``.

    ``None`` when they already fill a batch (``max_batch`` rows), or when the profiled best batch is no bigger
    than the rows at hand or not cheaper per row by more than ``INVARIANT_BAND`` (holding them would only idle
    the replica): flush now. Otherwise the earliest of one best-batch service time after the oldest was
    enqueued (requests without a deadline are not held long) and each deadline less the service time of the
    batch one row bigger (waiting longer would spend its slack). Pure, so that the fleet simulator
    (``benchmarks/fleet_sim.py``) batches by the same rule as the instance.

    Why the gain test: ResNet-18's static INT8 (1 thread) runs 2.15 ms per row at batch 1 and 2.18 at batch
    16 (its best batch is 1), yet a lone request waited up to the batch-16 time (35 ms) for rows that cannot
    make it cheaper. Served by ``infaas serve`` (2 replicas, OIP JSON bodies, ``wrk``), it answered 79
    requests/s at 2 connections and 155 at 16; flushing at once, 235 and 202.
    """
    rows = sum(r for _at, r, _deadline in pending)
    if rows >= max_batch:
        return None
    held = max(rows, 1)
    best = curve.best_batch
    if best <= held or curve.service_ms(best) / best >= (1.0 - INVARIANT_BAND) * _row_ms(curve, held):
        return None
    service_s = curve.service_ms(held + 1) / 1000.0
    at = pending[0][0] + curve.service_ms(max_batch) / 1000.0
    for _enqueued, _rows, deadline in pending:
        if deadline is not None:
            at = min(at, deadline - service_s)
    return at


def _row_ms(curve: ProfileCurve, rows: int) -> float:
    """Per-row time of a run of ``rows``, its time interpolated between the profiled batches around it
    (``service_ms`` would cost 3 rows the whole batch-4 time, and holding them would look worth more than it is)."""
    batches, times = curve.batches, curve.latencies_ms
    i = bisect.bisect_left(batches, rows)
    if i == 0 or i == len(batches) or batches[i] == rows:
        return curve.service_ms(rows) / rows
    low, high = batches[i - 1], batches[i]
    return (times[i - 1] + (times[i] - times[i - 1]) * (rows - low) / (high - low)) / rows


def batch_size(
    pending_rows: Sequence[int],
    max_batch: int,
    deadlines: Sequence[float | None] = (),
    service_s: Callable[[int], float] | None = None,
    now: float = 0.0,
) -> int:
    """How many of the waiting requests (their rows, oldest first) one session run takes: in order, up to
    ``max_batch`` rows, and always the oldest even when it alone is bigger.

    With ``deadlines`` (each request's, ``None``: none) and ``service_s`` (seconds a run of that many rows takes),
    a request is left for the next run when adding it would make a run that ends by every deadline of the batch
    end after one (its own or an earlier request's). Why: filling up to the best batch whatever the deadlines,
    four 16-row queries of the zoo CNN (best batch 64) ran together in 463 ms against their 400 ms budget and all
    four were late, where the oldest alone took about a quarter of that (``benchmarks/fleet_sim.py``, session 8:
    373,000 late queries on the 2,880 s day, static-peak's 1.2-1.6% of that class among them). A run that
    already misses a deadline keeps filling: its late requests lose nothing more, and bigger runs drain the
    queue behind them sooner.
    """
    taken = rows = 0
    earliest = math.inf  # the batch's tightest deadline so far
    for i, r in enumerate(pending_rows):
        if taken and rows + r > max_batch:
            break
        deadline = deadlines[i] if i < len(deadlines) else None
        due = math.inf if deadline is None else deadline
        if taken and service_s is not None and min(earliest, due) < math.inf:
            if now + service_s(rows) <= earliest and now + service_s(rows + r) > min(earliest, due):
                break
        earliest = min(earliest, due)
        taken += 1
        rows += r
    return taken


class InstanceClosed(RuntimeError):
    """The instance was unloaded between being looked up and being called."""


class _Request:
    __slots__ = ("inputs", "rows", "deadline", "enqueued", "done", "result", "error")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None) -> None:
        self.inputs = inputs
        self.rows = rows
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result: InferResult | None = None
        self.error: BaseException | None = None


def _run(session: Session, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run``; ``InvalidInput`` when ONNX Runtime fails on these inputs."""
    try:
        return session.run(output_names, feeds)
    except _RUN_FAILURES as exc:
        raise InvalidInput(f"the model could not run on this input: {str(exc)[:_MAX_MESSAGE]}") from None


def rows_of(inputs: dict[str, np.ndarray]) -> int:
    """Rows in a request: its first input's first dimension (1 for a scalar or no input)."""
    for value in inputs.values():
        return int(value.shape[0]) if value.ndim else 1
    return 1


class Instance:
    """A variant loaded with one or more replicas; thread-safe ``infer``."""

    def __init__(
        self,
        key: str,
        make_session: Callable[[], Session],
        curve: ProfileCurve,
        on_depth: Callable[[int], None] | None = None,
        batch_invariant: bool = True,
    ) -> None:
        """``batch_invariant=False`` for variants whose answer to one request depends on the other rows
        of the batch it runs in (dynamic quantization scales activations by the whole tensor's range):
        their requests are never concatenated, so a query's answer never depends on its neighbours.
        ``on_depth`` is called with the rows outstanding whenever they change.
        """
        self.key = key
        self.curve = curve
        self.last_used = time.monotonic()
        self._make_session = make_session
        self._on_depth = on_depth or (lambda _depth: None)
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Request] = deque()
        self._free: list[Session] = []
        self._threads: list[threading.Thread] = []
        self._retire = 0  # replica threads asked to exit
        self._gathering = False
        self._closed = False
        self._outstanding = 0
        self._outstanding_rows = 0
        first = make_session()
        self._output_names = [o.name for o in first.get_outputs()]
        # Inputs with a fixed first dimension cannot be concatenated: run such requests one by one.
        self.batchable = batch_invariant and all(not isinstance(i.shape[0], int) for i in first.get_inputs() if i.shape)
        self.max_batch = max(1, curve.best_batch) if self.batchable else 1
        self._add_session(first)

    # -- replicas ------------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """Replica threads currently serving."""
        return len(self._threads) - self._retire

    @property
    def outstanding(self) -> int:
        """Requests waiting or running."""
        return self._outstanding

    def add_replica(self) -> None:
        """Load one more session and start its thread."""
        self._add_session(self._make_session())

    def _add_session(self, session: Session) -> None:
        thread = threading.Thread(target=self._serve, name=f"infaas-{self.key}", daemon=True)
        with self._cond:
            self._free.append(session)
            self._threads.append(thread)
        thread.start()

    def remove_replica(self) -> bool:
        """Retire one replica (never the last); ``False`` if only one is left."""
        with self._cond:
            if self.replicas <= 1:
                return False
            self._retire += 1
            self._cond.notify_all()
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting work, let queued requests finish, stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in list(self._threads):
            thread.join(timeout_s)

    # -- requests ------------------------------------------------------------------------------
    def infer(self, inputs: dict[str, np.ndarray], deadline: float | None = None) -> InferResult:
        """Run one request (possibly batched with others); ``deadline`` is ``time.monotonic()`` based."""
        self.last_used = time.monotonic()
        rows = rows_of(inputs)
        cond = self._cond
        with cond:
            if self._closed:
                raise InstanceClosed(f"instance {self.key} is unloaded")
            self._outstanding += 1
            self._outstanding_rows += rows
            depth = self._outstanding_rows
            session = self._free.pop() if self._free and not self._pending else None
            if session is None:
                request = _Request(inputs, rows, deadline)
                self._pending.append(request)
                cond.notify_all()  # the gathering thread must see it, not just any waiter
        self._on_depth(depth)
        if session is not None:
            return self._run_direct(session, inputs, rows)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def try_run_now(self, inputs: dict[str, np.ndarray]) -> InferResult | None:
        """Run on this thread if a replica is free and nobody waits; else ``None`` (nothing queued)."""
        rows = rows_of(inputs)
        with self._cond:
            if self._closed or self._pending or not self._free:
                return None
            session = self._free.pop()
            self._outstanding += 1
            self._outstanding_rows += rows
            depth = self._outstanding_rows
        self.last_used = time.monotonic()
        self._on_depth(depth)
        return self._run_direct(session, inputs, rows)

    def _run_direct(self, session: Session, inputs: dict[str, np.ndarray], rows: int) -> InferResult:
        start = time.perf_counter()
        try:
            values = _run(session, self._output_names, inputs)
        finally:
            service_ms = (time.perf_counter() - start) * 1000.0
            self._release(session, 1, rows)
        return InferResult(dict(zip(self._output_names, values, strict=True)), 0.0, service_ms, rows)

    def _release(self, session: Session, finished: int, finished_rows: int) -> None:
        with self._cond:
            self._free.append(session)
            self._outstanding -= finished
            self._outstanding_rows -= finished_rows
            depth = self._outstanding_rows
            if self._pending or self._retire:
                self._cond.notify_all()
        self._on_depth(depth)

    # -- replica threads -----------------------------------------------------------------------
    def _serve(self) -> None:
        cond = self._cond
        me = threading.current_thread()
        while True:
            with cond:
                while True:
                    if self._retire > 0 and self._free:
                        self._free.pop()  # sessions are pooled: drop any free one
                        self._retire -= 1
                        self._threads.remove(me)
                        return
                    if self._pending and self._free and not self._gathering:
                        break
                    if self._closed and not self._pending:
                        self._threads.remove(me)
                        return
                    cond.wait()
                session = self._free.pop()
                batch = self._gather()
            self._run_batch(session, batch)

    def _gather(self) -> list[_Request]:
        """Wait (lock held, released while waiting) for a full batch or until slack runs out."""
        self._gathering = True
        try:
            while not self._closed:
                waiting = [(r.enqueued, r.rows, r.deadline) for r in self._pending]
                at = flush_at(waiting, self.max_batch, self.curve)
                now = time.monotonic()
                if at is None or now >= at:
                    break
                self._cond.wait(at - now)
            pending = self._pending
            taken = batch_size(
                [r.rows for r in pending],
                self.max_batch,
                [r.deadline for r in pending],
                lambda rows: self.curve.service_ms(rows) / 1000.0,
                time.monotonic(),
            )
            return [self._pending.popleft() for _ in range(taken)]
        finally:
            self._gathering = False

    def _run_batch(self, session: Session, batch: list[_Request]) -> None:
        start = time.monotonic()
        try:
            if len(batch) == 1:
                outcomes: list[list[np.ndarray] | InvalidInput] = [self._outcome(session, batch[0].inputs)]
            else:
                outcomes = self._run_concatenated(session, batch)
            service_ms = (time.monotonic() - start) * 1000.0
            rows = sum(r.rows for r in batch)
            for request, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, InvalidInput):
                    request.error = outcome
                    continue
                request.result = InferResult(
                    dict(zip(self._output_names, outcome, strict=True)),
                    (start - request.enqueued) * 1000.0,
                    service_ms,
                    rows,
                )
        except BaseException as exc:  # every waiter must be woken, whatever went wrong
            for request in batch:
                request.error = exc
        finally:
            self._release(session, len(batch), sum(r.rows for r in batch))
            for request in batch:
                request.done.set()

    def _outcome(self, session: Session, inputs: dict[str, np.ndarray]) -> list[np.ndarray] | InvalidInput:
        """One request's outputs, or the error its inputs caused (kept apart from its batch neighbours')."""
        try:
            return _run(session, self._output_names, inputs)
        except InvalidInput as exc:
            return exc

    def _run_concatenated(self, session: Session, batch: list[_Request]) -> list[list[np.ndarray] | InvalidInput]:
        names = batch[0].inputs.keys()
        if any(len({r.inputs[n].shape[1:] for r in batch}) > 1 for n in names):
            # Dynamic non-batch dimensions that differ between requests cannot be concatenated.
            return [self._outcome(session, r.inputs) for r in batch]
        feeds = {n: np.concatenate([r.inputs[n] for r in batch], axis=0) for n in names}
        total = sum(r.rows for r in batch)
        try:
            values = _run(session, self._output_names, feeds)
        except InvalidInput:
            # One request's values broke the run: run each alone, so only its sender gets the error.
            return [self._outcome(session, r.inputs) for r in batch]
        if any(v.ndim == 0 or v.shape[0] != total for v in values):
            # Outputs without a per-row first dimension cannot be split: run one by one instead.
            return [self._outcome(session, r.inputs) for r in batch]
        bounds = np.cumsum([r.rows for r in batch])[:-1]
        split = [np.split(v, bounds, axis=0) for v in values]
        return [[parts[i] for parts in split] for i in range(len(batch))]
