"""Structured logs: one JSON line per record on stderr (human-readable when stderr is a terminal), secrets masked.

Every line carries the time, level, logger, message and, where there is one, the request id (set per HTTP
request by ``RequestIds``) and the trace id (while tracing is on). Notable events pass structured fields with
``extra={"event": "...", ...}`` (``startup``, ``registration``, ``build``, ``autoscaler_decision``,
``worker_join``, ``worker_leave``, ``error``: a 5xx answer, and every ERROR line); they become top-level JSON
keys. Exceptions are one ``exc`` field.

No secret reaches a line: ``setup`` learns this process's secrets (the admin and API keys, passwords in the
database, Redis and broker URLs, the AWS secret key and session token) and every rendered line is masked with
them, with any ``Bearer`` token, any infaas API key (``infaas_...``) and any password inside a URL. Masking runs
only on lines that are written (a few per minute in steady state), never on the request path.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from infaas import tracing
from infaas.config import Settings

MASK = "***"

# The request being served on this task: a number, rendered as ``<process prefix>-<n>`` only when a line is
# written. Setting an int costs the request path about 0.1 µs; a uuid4 would cost 1.5 µs.
REQUEST_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("infaas_request_id", default=None)
_PROCESS = secrets.token_hex(3)  # request ids are unique across processes without coordination
_next_id = itertools.count(1).__next__

# What a LogRecord has of its own: everything else was passed with ``extra=`` and is a structured field.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(://[^/\s:@]*:)[^@\s/]+(@)"),  # scheme://user:PASSWORD@host
    re.compile(r"()infaas_[0-9a-f]{16}_[A-Za-z0-9_\-]{16,}"),  # an API key (infaas.auth.KeyStore.create)
)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "INFAAS_ADMIN_KEY", "INFAAS_API_KEY")


def request_id() -> str | None:
    """The current request's id (``None`` outside a request)."""
    number = REQUEST_ID.get()
    return None if number is None else f"{_PROCESS}-{number:x}"


class RequestIds:
    """ASGI middleware giving each HTTP request an id that its log lines carry (``REQUEST_ID``).

    Outermost, so every line an HTTP request causes has it. Costs one more ASGI layer, a counter step and a
    context-variable set: 0.68 µs per request (benchmarks/tracing_and_logs_cost.py). Each request runs in its
    own task, whose context is its own copy, so nothing is reset afterwards.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            REQUEST_ID.set(_next_id())
        await self.app(scope, receive, send)


class Redactor:
    """Masks known secret values, bearer tokens, API keys and URL passwords in a rendered line."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole; short values would mask ordinary words.
        # A value is also looked for as JSON writes it (a quote or backslash in a password is escaped there).
        kept = {v for v in values if v and len(v) >= 6}
        kept |= {json.dumps(v, ensure_ascii=False)[1:-1] for v in kept}
        self._values = sorted(kept, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(2) if m.re.groups > 1 else ""), text)
        return text


def url_password(url: str | None) -> str | None:
    """The password inside a URL (``postgresql://user:PASSWORD@host/db``), if any."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def without_password(url: str | None) -> str | None:
    """A URL with its password masked (the rest says where a service is, which an operator needs)."""
    password = url_password(url)
    if url is None or password is None:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f":{password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def secrets_of(settings: Settings, environ: dict[str, str] | None = None) -> list[str]:
    """Every secret value this process knows: keys, URL passwords and the secret environment variables."""
    environ = dict(os.environ) if environ is None else environ
    found = [settings.admin_key or "", settings.api_key or ""]
    found += [url_password(u) or "" for u in (settings.database_url, settings.redis_url, settings.broker_url)]
    found += [environ.get(name, "") for name in _SECRET_ENV]
    return [value for value in found if value]


def public_config(settings: Settings) -> dict[str, Any]:
    """The effective configuration as the startup line shows it: keys as whether they are set, URLs without
    their passwords, everything else as is."""
    shown: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if name in {"admin_key", "api_key"}:
            shown[name] = MASK if value else None
        elif name.endswith("_url") or name == "model_store":
            shown[name] = without_password(value)
        else:
            shown[name] = value if isinstance(value, int | float | bool | str | type(None) | dict) else str(value)
    shown["database_url"] = without_password(settings.resolved_database_url)
    shown["model_store"] = without_password(settings.resolved_model_store)
    return shown


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured part of a record: request and trace ids, then what was passed with ``extra=``."""
    fields: dict[str, Any] = {}
    rid = request_id()
    if rid is not None:
        fields["request_id"] = rid
    if tracing.ENABLED:
        tid = tracing.trace_id()
        if tid is not None:
            fields["trace_id"] = tid
    for key, value in vars(record).items():
        if key not in _RECORD_FIELDS and not key.startswith("_"):
            fields[key] = value
    if record.levelno >= logging.ERROR:
        fields.setdefault("event", "error")  # an unexpected failure (a traceback, uvicorn's "Exception in ASGI")
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the structured fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self._redact(json.dumps(line, default=str, ensure_ascii=False))


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` for a person at a terminal."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text += f"  [{extras}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return self._redact(text)


def setup(settings: Settings, *, stream: TextIO | None = None, json_lines: bool | None = None) -> logging.Handler:
    """Send this process's logs (infaas's at INFO, others' at WARNING) to ``stream`` (stderr), one line each:
    JSON unless ``json_lines`` is False or, left None, the stream is a terminal. Replaces an earlier setup."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    redact = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redact) if json_lines else HumanFormatter(redact))
    handler.set_name("infaas")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "infaas"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("infaas", "api", "autoscaler", "variant_generator"):
        logging.getLogger(name).setLevel(logging.INFO)
    return handler
