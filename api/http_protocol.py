"""The HTTP protocol ``infaas serve`` runs: uvicorn's httptools protocol with the bounds it lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with ``limit_concurrency``, the
requests it starts (503 past it), but not how long or how large a request's headers may be: 200
slow-loris connections sending a header byte at a time were all still held after 20 s (issue 14), and
its ``h11_max_incomplete_event_size`` applies only to the h11 protocol, not to httptools. So here:

* a connection must complete each request's headers within ``INFAAS_HEADER_TIMEOUT_S`` of connecting
  or of the request's first byte, and in at most ``MAX_HEADER_BYTES``; otherwise it is closed;
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
        self._header_deadline: asyncio.TimerHandle | None = None
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
        if self._header_deadline is not None:  # still inside a request's headers after this chunk
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
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_deadline is None:
            self._header_bytes = 0
            self._header_deadline = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _headers_done(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.debug("closing %s: no complete request headers within %.0f s", self.client, self._header_timeout_s)
            self.transport.close()
