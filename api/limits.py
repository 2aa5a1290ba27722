"""Request body size limits, enforced before a route reads the body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import render
from infaas.errors import PayloadTooLarge


class BodySizeLimit:
    """413 for bodies over the limit: uploads (multipart) get the upload limit, others the body limit.

    Checks the declared Content-Length first and counts streamed bytes too, so a chunked body cannot
    slip past.
    """

    def __init__(self, app: ASGIApp, upload_limit: int, body_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"")
        limit = self.upload_limit if content_type.startswith(b"multipart/") else self.body_limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await _too_large(scope, receive, send, limit)
                return
            if b"transfer-encoding" not in headers:
                # The HTTP server delivers exactly Content-Length bytes, so there is nothing to count:
                # skip the receive/send wrappers (they cost every request a few coroutine hops).
                await self.app(scope, receive, send)
                return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            # Past the limit, answer 413 ourselves and tell the app the client went away: raising here
            # would be caught by body parsers and turned into a misleading 400.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await _too_large(scope, receive, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # The app may fail on the disconnect we fed it (e.g. starlette's ClientDisconnect); the client
            # already has its 413, so that failure is expected and not an error of the server.
            if not refused:
                raise


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """The 413, rendered like every other error (a middleware sits outside the app's exception handlers)."""
    refusal = PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
    await render(scope["path"], refusal)(scope, receive, send)
