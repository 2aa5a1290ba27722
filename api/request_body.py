"""A request's body, read in one ``receive`` when it arrived in one message.

An inference body is small and arrives whole: uvicorn hands it to the app in a single ``http.request``
message. Starlette's ``Request.body()`` still runs it through an async generator (``stream()``, opened
and closed per request): 4.2 us against 1.0 us for the single ``receive`` (measured in process, a 500-byte
body), on the routes that every query takes. A body in several messages is read on through the same
``stream()`` so nothing changes for it.
"""

from __future__ import annotations

from contextlib import aclosing

from starlette.requests import ClientDisconnect, Request


async def read_body(request: Request) -> bytes:
    """The whole body; ``ClientDisconnect`` if the client went away first (as ``Request.body()`` raises)."""
    message = await request.receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    first: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return first
    chunks = [first]
    async with aclosing(request.stream()) as rest:
        async for chunk in rest:
            chunks.append(chunk)
    return b"".join(chunks)
