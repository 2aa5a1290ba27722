"""Per-key concurrent-request limit: 429 with ``Retry-After`` once a key has too many requests in flight.

An ASGI middleware rather than a route dependency, for two reasons: it holds the slot until the last
byte of the response is sent (a dependency would let a streaming response outlive its slot), and it
costs only a dict lookup per request, with no database access, because it keys on the bearer token
itself. Authentication still happens once, in ``api.deps.get_principal``; a bogus token only ever
fills its own bucket, and is refused with 401 there.

Counting needs no lock: the middleware never awaits between reading and updating a counter, and the
event loop runs one coroutine at a time.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import render
from infaas.errors import TooManyRequests

RETRY_AFTER_S = 1


class ConcurrencyLimit:
    """Bound the requests each key (or, without a key, each client address) has in flight.

    Only paths under ``prefixes`` count, minus ``exempt`` ones (health probes must answer even when a
    client saturates its budget).
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        prefixes: tuple[str, ...] = ("/v1/", "/v2/"),
        exempt: tuple[str, ...] = ("/v2/health",),
    ) -> None:
        if limit < 1:
            raise ValueError("the concurrent-request limit must be at least 1")
        self.app = app
        self.limit = limit
        self.prefixes = prefixes
        self.exempt = exempt
        self.in_flight: dict[str, int] = {}

    def _bucket(self, scope: Scope) -> str | None:
        path: str = scope.get("path", "")
        if not path.startswith(self.prefixes) or path.startswith(self.exempt):
            return None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return "key:" + value.decode("latin-1").partition(" ")[2].strip()
        client = scope.get("client")
        return f"client:{client[0] if client else ''}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bucket = self._bucket(scope) if scope["type"] == "http" else None
        if bucket is None:
            await self.app(scope, receive, send)
            return
        count = self.in_flight.get(bucket, 0)
        if count >= self.limit:
            await _too_many(scope, receive, send, self.limit)
            return
        self.in_flight[bucket] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            remaining = self.in_flight[bucket] - 1
            if remaining:
                self.in_flight[bucket] = remaining
            else:
                del self.in_flight[bucket]  # keeps the table as small as the set of busy keys


async def _too_many(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """The 429, rendered like every other error (a middleware sits outside the app's exception handlers)."""
    refusal = TooManyRequests(
        f"more than {limit} concurrent requests with this key (INFAAS_MAX_CONCURRENT_PER_KEY); retry shortly",
        retry_after_s=RETRY_AFTER_S,
    )
    await render(scope["path"], refusal)(scope, receive, send)
