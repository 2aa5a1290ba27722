"""A direct path to the inference endpoints, past FastAPI's routing and request machinery.

``POST /v1/infer`` and ``POST /v2/models/{name}[/versions/{version}]/infer`` are nearly every request a
serving system gets, and for a small model FastAPI's per-request work (trying routes in order, the
exit stacks, dependency solving, exception wrapping) costs more than selecting a variant and running
it. Both endpoints take only the ``Request``, so this pure-ASGI middleware can call them itself. Which
requests it takes is read from the app's own registered routes (their paths and methods), so the two
cannot disagree; errors are answered by the app's own exception handlers (``api.errors`` installs the
one for infaas's errors). It sits inside the
body-size and concurrency limits, so they still apply; the routes stay registered (OpenAPI, and any
request this does not match, e.g. a wrong method, goes through the router as before).

``benchmarks/overhead.py`` measures the app with and without it (``INFAAS_INFERENCE_FAST_PATH``); it
stays only while it gains at least 15% throughput at 16 connections (issue 11).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import routing
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


def registered_routes(routes: Sequence[BaseRoute], endpoints: Sequence[Endpoint]) -> tuple[Route, ...]:
    """The app's routes to ``endpoints`` as plain Starlette routes (full path, methods, endpoint).

    Since FastAPI 0.165 ``include_router`` keeps each router nested, so the app's route list holds
    included routers rather than the routes themselves; ``iter_route_contexts`` walks them with their
    include prefixes applied (older FastAPI copies every route into the app's list).
    """
    walk: Callable[[Sequence[BaseRoute]], Iterable[object]] = getattr(routing, "iter_route_contexts", iter)
    found = []
    for route in walk(routes):
        endpoint, path = getattr(route, "endpoint", None), getattr(route, "path", None)
        if endpoint in endpoints and path is not None:
            found.append(Route(path, endpoint, methods=sorted(getattr(route, "methods", None) or ())))
    return tuple(found)


class FastInferenceRoutes:
    """Serve the routes whose endpoint is one of ``endpoints`` directly; everything else goes to the app.

    An exception from an endpoint is answered by the app's own exception handlers (``app.exception_handlers``,
    looked up along the exception's class hierarchy as Starlette does), so a handler registered on the app
    applies here exactly as it does behind the router; an exception without a handler propagates.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        endpoints: Sequence[Endpoint],
        handlers: Mapping[Any, Callable[..., Any]],
    ) -> None:
        self.app = app
        self._routes = routes  # the app's live route list: routers are included after middleware is added
        self._endpoints = tuple(endpoints)
        self._handlers = handlers  # the app's live handler table
        self._fast: tuple[Route, ...] | None = None
        self._literal: dict[str, Route] = {}  # routes without parameters, by path
        self._prefixed: tuple[tuple[str, Route], ...] = ()  # the others, with the literal start of their path

    def fast_routes(self) -> tuple[Route, ...]:
        """The routes served here, read from the app on first use."""
        if self._fast is None:
            routes = registered_routes(self._routes, self._endpoints)
            self._literal = {r.path: r for r in routes if "{" not in r.path}
            self._prefixed = tuple((r.path.partition("{")[0], r) for r in routes if "{" in r.path)
            self._fast = routes
        return self._fast

    def _match(self, scope: Scope) -> Route | None:
        """The route that serves ``scope``, with its endpoint and path parameters put in the scope; ``None`` if none.

        A path with no parameters is a dict lookup and a method test; the others are tried only when their
        path starts like the request's, and then by the route itself (``Route.matches``: regex, parameters,
        methods). Trying each route's regex in turn cost an OIP request 3.3 us and ``/v1/infer`` 1.1 us; this
        costs them 1.1 and 0.3 us (measured).
        """
        if self._fast is None:
            self.fast_routes()
        path: str = scope["path"]
        literal = self._literal.get(path)
        if literal is not None:
            if scope["method"] not in (literal.methods or ()):
                return None  # the router answers 405
            scope["endpoint"] = literal.endpoint
            scope["path_params"] = dict(scope.get("path_params", {}))  # as Route.matches leaves it: no new ones
            return literal
        for prefix, route in self._prefixed:
            if path.startswith(prefix):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._match(scope)
            if route is not None:
                await self._serve(route.endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        for kind in type(exc).__mro__:
            if kind in self._handlers:
                return self._handlers[kind]
        return None
