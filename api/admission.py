"""Admission: who is calling, and whether their quotas allow the request, decided from the headers alone,
before a single body byte is read.

Routes authenticate through ``api.deps.get_principal``, but FastAPI reads (and spools to disk) a
request's body before it resolves a route's dependencies. Uploads were therefore received in full before
the key was checked: a 150 MB upload with a fake key got its 401 only after all of it arrived (156 MB
written to disk), and 80 concurrent 20 MB uploads with 80 fake tokens all ran to 401 with 1.4 GB on disk
at once (issue 14). This pure-ASGI middleware runs the same ``authenticate`` (through ``get_principal``;
the console's ``console_session`` for console forms) on the headers and stores the principal in the
scope, where the routes' dependency finds it. So every route's refusal comes before its body, and the
per-key concurrency limit inside it (``api.concurrency``) counts authenticated keys, not token strings.
The quotas that an upload would otherwise be wasted on (``infaas.quotas``) are checked here too: a
registration attempt is counted here, once; jobs in flight are checked here and again where the job is
recorded (other submissions may have been recorded while this upload arrived).

Refusals from here share one small bucket (``INFAAS_MAX_CONCURRENT_UNAUTHENTICATED``): a caller without a
valid key has no key to be limited by, and each refusal may hold its connection while the rest of the
body is drained (``api.early_answers``). Past the bucket, the answer is 429.
"""

from __future__ import annotations

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.console.auth import LoginRequired, console_session
from api.console.routes import sign_in_answer
from api.deps import get_principal
from api.errors import refuse
from infaas.auth import Principal
from infaas.errors import InfaasError, TooManyRequests
from infaas.services import Services

CONSOLE_PREFIX = "/console/"
CONSOLE_API_PREFIX = "/console/api/"  # the console's JSON endpoints answer a JSON 401
CONSOLE_SIGN_IN = "/console/login"  # takes the key in its form: the one console POST without a session
HEALTH_PREFIX = "/v2/health"
QUOTA_ROUTES = frozenset({"/v1/models", "/v1/jobs"})  # POSTs whose quotas are checked before the upload
RETRY_AFTER_S = 1


def _api_route(path: str) -> bool:
    """``/v1/...`` and ``/v2[/...]`` need a principal; health probes never do."""
    return (path.startswith("/v1/") or path == "/v2" or path.startswith("/v2/")) and not path.startswith(HEALTH_PREFIX)


def _console_form(scope: Scope) -> bool:
    """Console POSTs (forms and the console's upload) need a signed-in admin; sign-in itself cannot."""
    path: str = scope["path"]
    return scope["method"] == "POST" and path.startswith(CONSOLE_PREFIX) and path != CONSOLE_SIGN_IN


class Admission:
    """Authenticate from the headers and check upload quotas; refuse before the body is read."""

    def __init__(self, app: ASGIApp, unauthenticated_limit: int) -> None:
        if unauthenticated_limit < 1:
            raise ValueError("the unauthenticated request limit must be at least 1")
        self.app = app
        self.unauthenticated_limit = unauthenticated_limit
        self.refusing = 0  # refusals in flight (no await between reading and updating it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            path: str = scope["path"]
            if _api_route(path):
                principal = await get_principal(Request(scope))  # stores it in the scope for the route
                if scope["method"] == "POST" and path in QUOTA_ROUTES:
                    await self._admit_upload(scope, principal)
            elif _console_form(scope):
                request = Request(scope)
                try:
                    await run_in_threadpool(console_session, request, request.app.state.services)
                except LoginRequired as refusal:  # a browser whose session expired: the sign-in page
                    if scope["path"].startswith(CONSOLE_API_PREFIX):
                        raise
                    await sign_in_answer(request, refusal)(scope, receive, send)
                    return
        except InfaasError as refusal:
            await self._refuse(scope, receive, send, refusal)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _admit_upload(scope: Scope, principal: Principal) -> None:
        """The quotas of a ``POST`` to one of ``QUOTA_ROUTES`` (only those: every other call skips this)."""
        services: Services = scope["app"].state.services
        if scope["path"] == "/v1/models":
            await run_in_threadpool(services.quotas.admit_registration, principal)
        else:
            await run_in_threadpool(services.quotas.check_jobs, principal)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: InfaasError) -> None:
        if self.refusing >= self.unauthenticated_limit:
            refusal = TooManyRequests(
                f"more than {self.unauthenticated_limit} requests without a valid key or over a quota at once "
                "(INFAAS_MAX_CONCURRENT_UNAUTHENTICATED); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
            await refuse(scope, receive, send, refusal)
            return
        self.refusing += 1
        try:
            await refuse(scope, receive, send, refusal)
        finally:
            self.refusing -= 1
