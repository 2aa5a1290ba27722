"""The one root of every error infaas reports to a caller.

Each error carries the HTTP status that fits it and a stable machine-readable ``code``; the API renders
them in one handler (``api/errors.py``): ``{"detail", "code"}`` on ``/v1`` and the console,
``{"error"}`` with Triton's statuses on ``/v2``. The domain never imports HTTP machinery: a status is a
number on the error class, and a raise site only chooses the class (and, rarely, extra headers such as
``Retry-After``).

Errors of a concern live beside it when only that concern raises them (``selector.AccuracyUnavailable``,
``offline.JobInputError``) but always derive from one of the classes here, so a route never translates.
"""

from __future__ import annotations

from collections.abc import Mapping


class InfaasError(Exception):
    """Base of every error a caller may see; ``status``/``code`` say how it is answered."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return self.message


# -- by status: raise these (or a subclass) -------------------------------------------------------
class BadRequest(InfaasError):
    """The request is malformed or names something inconsistent; the message says what to fix."""

    status = 400
    code = "bad_request"


class Unauthenticated(InfaasError):
    """No, an invalid or a revoked API key."""

    status = 401
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(InfaasError):
    """Authenticated, but this key may not do this."""

    status = 403
    code = "forbidden"


class NotFound(InfaasError):
    """No such thing, or one the caller may not see (the two are indistinguishable on purpose)."""

    status = 404
    code = "not_found"


class Conflict(InfaasError):
    """The request clashes with what is stored (a duplicate name, a job not in the right state)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(InfaasError):
    """A body or upload over the configured limit."""

    status = 413
    code = "payload_too_large"


class Unprocessable(InfaasError):
    """Well-formed, but cannot be met as asked (e.g. an accuracy floor no variant reaches)."""

    status = 422
    code = "unprocessable"


class TooManyRequests(InfaasError):
    """A rate or concurrency limit; ``Retry-After`` says when to try again."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class Unavailable(InfaasError):
    """Right request, wrong moment: nothing ready or reachable to serve it yet."""

    status = 503
    code = "unavailable"


class BackendUnavailable(Unavailable):
    """A service infaas keeps its state in (the metadata database, Redis, the job broker) did not answer.

    The API raises it in place of the driver's connection error (``api.errors``), so a client learns that
    retrying is right and when (``Retry-After``) instead of getting a 500.
    """

    code = "backend_unavailable"

    def __init__(self, message: str, retry_after_s: float = 2.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


# -- the query path ---------------------------------------------------------------------------------
class InvalidInput(BadRequest):
    """Wrong input names, dtype or shape, or too many rows/inputs."""

    code = "invalid_input"


class UnknownModel(NotFound):
    """No such model or task, or none the caller may use."""

    code = "unknown_model"


class ModelNotReady(Unavailable):
    """The model exists but has no ready, profiled variant yet (or no worker can take it)."""

    code = "model_not_ready"


__all__ = [
    "BackendUnavailable",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InfaasError",
    "InvalidInput",
    "ModelNotReady",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "UnknownModel",
    "Unprocessable",
]
