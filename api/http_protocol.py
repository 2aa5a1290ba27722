"""The HTTP protocol ``infaas serve`` runs: uvicorn's httptools protocol with the bounds it lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with ``limit_concurrency``, the
requests it starts (503 past it), but not how long or how large a request's headers may be: 200
slow-loris connections sending a header byte at a time were all still held after 20 s (issue 14), and
its ``h11_max_incomplete_event_size`` applies only to the h11 protocol, not to httptools. So here:

* a connection must complete each request's headers within ``INFAAS_HEADER_TIMEOUT_S`` of connecting
  or of the request's first byte, and in at most ``MAX_HEADER_BYTES``; otherwise it is closed. The
  deadline is one timer per connection that is left running when headers complete and, when it fires,
  closes the connection only if a request's headers are still late (re-arming itself for a request that
  began since): a timer started and cancelled per request cost 2.1 us of every keep-alive request
  (uvloop ``call_later`` + ``cancel``, measured), more than the check it implements;
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


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a deadline and a size bound on headers, and no reading past a finished answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = get_settings().header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None  # armed at most once per connection
        self._awaiting_headers = False  # a request's headers (or a new connection's first) are due
        self._headers_started = 0.0  # loop time they became due
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers:  # still inside a request's headers after this chunk
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                log.debug("closing %s: request headers over %d bytes", self.client, MAX_HEADER_BYTES)
                self._headers_done()
                self.transport.close()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self.transport.close()  # the body is still arriving past what the app drained
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._awaiting_headers:  # the first request of a connection: due since connecting
            return
        self._awaiting_headers = True
        self._headers_started = self.loop.time()
        self._header_bytes = 0
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self._header_timeout_s, self._check_header_deadline)

    def _headers_done(self) -> None:
        self._awaiting_headers = False  # the timer keeps running: _check_header_deadline finds nothing due

    def _check_header_deadline(self) -> None:
        self._header_deadline = None
        if not self._awaiting_headers or self.transport.is_closing():
            return  # nothing due: the next request arms the timer again
        left_s = self._headers_started + self._header_timeout_s - self.loop.time()
        if left_s > 0:  # a later request's headers, due after this timer was armed
            self._header_deadline = self.loop.call_later(left_s, self._check_header_deadline)
            return
        log.debug("closing %s: no complete request headers within %.0f s", self.client, self._header_timeout_s)
        self.transport.close()
