"""Early answers reach the client: read what is left of a request body (up to a bound) before the last
byte of the answer, so that closing the connection cannot destroy the answer.

Refusing a request before reading its body is right (an unknown key, an unknown model, a body over the
limit), but a client that sends its whole body before reading the answer, as Python's ``urllib`` does,
never saw it: ``urllib`` asks for ``Connection: close``, the server closed with the body still unread,
and the kernel answered the unread bytes with a reset that discards the answer too. A 2 MB OIP body to an
unknown model got ``Broken pipe`` and a 6 MB one ``Connection reset by peer`` instead of the 404 (issue 14;
curl, which reads the answer early, saw the 404). nginx lingers for the same reason.

So, when the app completes an answer while the request body is still arriving, the answer is sent at once
(headers and body: a client that reads early has it now) and the final, empty message that lets the server
close is held back while the rest of the body is read and discarded: at most ``limit_bytes`` in all (the
body limit: a body declared larger is not waited for), for at most ``timeout_s``, and by at most
``max_draining`` requests at once. Past any bound the connection is closed as before.

Also here: a client that disconnects mid-body while a route reads it is not a server error. Starlette
raises ``ClientDisconnect``, which used to reach the server as an ERROR with a full traceback per request
(log flooding); it is logged at debug level instead.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # a 16 MB body at 1.6 MB/s (a slow link) still drains in time
MAX_DRAINING = 64  # requests draining at once; each costs the event loop only the reads


def _declared_body(scope: Scope) -> tuple[bool, int | None]:
    """Whether the request may have a body, and its (first) declared Content-Length: one pass over the headers."""
    may_have_body = False
    declared: bytes | None = None
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value if declared is None else declared
            may_have_body = may_have_body or value.strip() not in (b"", b"0")
        elif name == b"transfer-encoding":
            may_have_body = True
    return may_have_body, int(declared) if declared is not None and declared.isdigit() else None


class DrainBeforeClose:
    """Outermost middleware: hold the end of an early answer until the request body is read (bounded)."""

    def __init__(
        self,
        app: ASGIApp,
        limit_bytes: int,
        timeout_s: float = DRAIN_TIMEOUT_S,
        max_draining: int = MAX_DRAINING,
    ) -> None:
        self.app = app
        self.limit_bytes = limit_bytes
        self.timeout_s = timeout_s
        self.max_draining = max_draining
        self.draining = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            may_have_body, declared = _declared_body(scope)
            if may_have_body:
                exchange = _Exchange(self, scope, receive, send, declared)
                await self.app(scope, exchange.receive, exchange.send)
            else:
                await self.app(scope, receive, send)
        except ClientDisconnect:
            client = scope.get("client")
            log.debug("client %s went away while sending the body of %s", client, scope.get("path"))

    async def drain(self, scope: Scope, body: _Exchange) -> None:
        """Read and discard the rest of the body within the bounds; give up silently past any of them."""
        if (body.declared is not None and body.declared > self.limit_bytes) or self.draining >= self.max_draining:
            return
        self.draining += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                while not body.done and body.received <= self.limit_bytes:
                    await body.receive()
        except TimeoutError:
            log.debug("gave up draining the body of %s after %.0f s", scope.get("path"), self.timeout_s)
        finally:
            self.draining -= 1


class _Exchange:
    """One request's ``receive`` and ``send`` as the app sees them: ``receive`` counts what has arrived and
    notes when nothing more will; ``send`` holds back the end of an answer completed before that.

    One object with two methods, built once per request, rather than a body counter and a ``send`` closure:
    this layer cost every request with a body 1.5 us, most of it those allocations (measured in process).
    """

    __slots__ = ("_middleware", "_receive", "_scope", "_send", "declared", "done", "received")

    def __init__(
        self, middleware: DrainBeforeClose, scope: Scope, receive: Receive, send: Send, declared: int | None
    ) -> None:
        self._middleware = middleware
        self._scope = scope
        self._receive = receive
        self._send = send
        self.declared = declared
        self.received = 0
        self.done = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:  # http.disconnect
            self.done = True
        return message

    async def send(self, message: Message) -> None:
        if self.done or message["type"] != "http.response.body" or message.get("more_body", False):
            await self._send(message)
            return
        await self._send({**message, "more_body": True})  # the whole answer, now
        await self._middleware.drain(self._scope, self)
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
