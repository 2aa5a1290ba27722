"""Request body size limits, enforced before a route reads the body.

The larger upload limit belongs to the routes that take uploads, whatever Content-Type a request
declares: it used to follow ``multipart/`` in the Content-Type, and a 17 MB ``/v1/infer`` JSON body sent
as ``multipart/form-data; boundary=z`` was served (a 190 MB one was parsed in full, 0.91 -> 2.78 GB of
memory, before its 400; issue 14).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import refuse
from infaas.errors import PayloadTooLarge

# (method, path) of the routes that take file uploads: model registration (REST and console) and jobs.
UPLOAD_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/v1/models"), ("POST", "/v1/jobs"), ("POST", "/console/actions/register")}
)


def takes_uploads(scope: Scope) -> bool:
    """Whether the request goes to a route that takes file uploads."""
    return (scope.get("method", ""), scope.get("path", "")) in UPLOAD_ROUTES


class BodySizeLimit:
    """413 for bodies over the limit: upload routes get the upload limit, every other route the body limit.

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
        limit = self.upload_limit if takes_uploads(scope) else self.body_limit
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
    await refuse(scope, receive, send, refusal)
