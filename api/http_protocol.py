"""The HTTP protocol ``infaas serve`` runs: uvicorn's httptools protocol with the bounds it lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with ``limit_concurrency``, the
requests it starts (503 past it), but not how long or how large a request's headers may be: 200
slow-loris connections sending a header byte at a time were all still held after 20 s (issue 14), and
its ``h11_max_incomplete_event_size`` applies only to the h11 protocol, not to httptools. So here:

* a connection must complete each request's headers within ``INFAAS_HEADER_TIMEOUT_S`` of connecting
  or of the request's first byte, and in at most ``MAX_HEADER_BYTES``; otherwise it is closed (this
  deadline and uvicorn's keep-alive timeout share one timer per connection, not one per request: see
  the class);
* a connection whose answer is complete while its request body is still arriving is closed: the app
  drains what it will (``api.early_answers``, up to the body limit); past that, uvicorn would read and
  discard the rest of the body for as long as the client sends it.

uvicorn loads this class by import string (``http="api.http_protocol:GuardedHttpToolsProtocol"``), so the
CLI in the core never imports the ``api`` layer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from infaas.config import get_settings

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; 8 KB is the common server default, bearer keys are short
TIMER_SLACK_S = 0.001  # a timer may fire this early (uvloop counts in milliseconds): the deadline counts as passed


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a deadline and a size bound on headers, and no reading past a finished answer.

    Every deadline of a connection -- its headers, and uvicorn's keep-alive timeout once an answer is
    complete -- is kept by one timer, armed for the earliest and left running while requests come and go;
    when it fires it closes the connection if a deadline has passed and is armed again for the next one.
    Started and cancelled per request, as uvicorn does for keep-alive, each such timer cost every request
    2.1 us (uvloop ``call_later`` + ``cancel``, measured): with two, as much as the header checks themselves.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = get_settings().header_timeout_s
        self._deadline: asyncio.TimerHandle | None = None  # the connection's one timer
        self._awaiting_headers = False  # a request's headers (or a new connection's first) are due
        self._headers_started = 0.0  # loop time they became due
        self._idle = False  # an answer is complete and no byte of the next request has arrived
        self._idle_since = 0.0
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._idle = False  # uvicorn's keep-alive timeout ends with the first byte, as its own timer did
        super().data_received(data)
        if self._awaiting_headers:  # still inside a request's headers after this chunk
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                log.debug("closing %s: request headers over %d bytes", self.client, MAX_HEADER_BYTES)
                self._awaiting_headers = False
                self.transport.close()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self.transport.close()  # the body is still arriving past what the app drained
        # uvicorn's own (0.30 to 0.54), except that the keep-alive timeout is a deadline of the connection's
        # timer instead of a timer of its own.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()  # a no-op: uvicorn's keep-alive timer is never started here
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle = True
            self._idle_since = self.loop.time()
            self._arm(self._idle_since + self.timeout_keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._awaiting_headers = self._idle = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._awaiting_headers:  # the first request of a connection: due since connecting
            return
        self._awaiting_headers = True
        self._headers_started = self.loop.time()
        self._header_bytes = 0
        self._arm(self._headers_started + self._header_timeout_s)

    def _arm(self, deadline: float) -> None:
        """Make the timer fire by ``deadline``: a timer due no later stays (it arms itself again when it fires)."""
        timer = self._deadline
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._deadline = self.loop.call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        now = self.loop.time() + TIMER_SLACK_S
        headers_due = self._headers_started + self._header_timeout_s if self._awaiting_headers else None
        idle_due = self._idle_since + self.timeout_keep_alive if self._idle else None
        if headers_due is not None and headers_due <= now:
            log.debug("closing %s: no complete request headers within %.0f s", self.client, self._header_timeout_s)
            self.transport.close()
        elif idle_due is not None and idle_due <= now:
            self.transport.close()  # idle past the keep-alive timeout, as uvicorn's own timer would close it
        elif headers_due is not None or idle_due is not None:
            self._arm(min(d for d in (headers_due, idle_due) if d is not None))
