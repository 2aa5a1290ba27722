"""The deadlines of ``infaas serve``'s HTTP protocol: a request's headers, each from its own first byte on a
keep-alive connection, and uvicorn's keep-alive timeout, both kept by one timer per connection (armed at
connect, left running between requests)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from api import http_protocol
from api.http_protocol import GuardedHttpToolsProtocol
from tests.factories import wait_for
from tests.s3server import free_port

TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.5
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # answers after the connection's first deadline: its timer finds nothing due
        await asyncio.sleep(1.2 * TIMEOUT_S)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture()
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(http_protocol, "get_settings", lambda: SimpleNamespace(header_timeout_s=TIMEOUT_S))
    chosen = free_port()
    config = uvicorn.Config(
        _ok,
        host="127.0.0.1",
        port=chosen,
        http=GuardedHttpToolsProtocol,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10)
    yield chosen
    server.should_exit = True
    thread.join(10)


def _answer(connection: socket.socket) -> bytes:
    """One whole response (headers and the two-byte body); ``b""`` if the server closed instead."""
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = connection.recv(4096)
        if not chunk:
            return b""
        data += chunk
    return data


def _closed(connection: socket.socket) -> bool:
    connection.settimeout(0.05)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_later_request_whose_headers_stall_is_closed(port: int) -> None:
    """Its headers start halfway to the timer armed at connect: that timer finds them not yet late and must
    check again at their own deadline."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connected = time.monotonic()
        connection.sendall(REQUEST)
        assert _answer(connection).startswith(b"HTTP/1.1 200")
        time.sleep(max(0.0, connected + 0.5 * TIMEOUT_S - time.monotonic()))
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert wait_for(lambda: _closed(connection), TIMEOUT_S + 5)
        assert time.monotonic() - started < TIMEOUT_S + 5


def test_each_request_has_the_whole_deadline_from_its_first_byte(port: int) -> None:
    """The connection's timer, armed at connect, fires while the second request's headers are still arriving
    but within that request's own deadline: it must not close the connection, only check again later."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connected = time.monotonic()
        connection.sendall(REQUEST)
        assert _answer(connection).startswith(b"HTTP/1.1 200")
        time.sleep(max(0.0, connected + 0.7 * TIMEOUT_S - time.monotonic()))
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.6 * TIMEOUT_S)  # past the first timer (connect + TIMEOUT_S), inside this request's deadline
        connection.sendall(b"\r\n")
        connection.settimeout(5)
        assert _answer(connection).startswith(b"HTTP/1.1 200")
        connection.sendall(REQUEST)  # and the connection keeps serving
        assert _answer(connection).startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(port: int) -> None:
    """uvicorn's keep-alive timeout (``timeout_keep_alive``, KEEP_ALIVE_S here) runs on the connection's timer,
    armed again by the answer: the timer armed at connect fired while the request ran and found nothing due."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        connection.settimeout(5)
        assert _answer(connection).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        assert not _closed(connection)  # open while the timeout runs
        assert wait_for(lambda: _closed(connection), KEEP_ALIVE_S + 5)
        assert KEEP_ALIVE_S - 0.2 < time.monotonic() - answered < KEEP_ALIVE_S + 5


def test_a_connection_in_use_outlives_the_keep_alive_timeout(port: int) -> None:
    """Requests arriving before each keep-alive deadline keep the connection for longer than the timeout, and
    pipelined requests are answered in turn."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * KEEP_ALIVE_S:
            connection.sendall(REQUEST)
            assert _answer(connection).startswith(b"HTTP/1.1 200")
            time.sleep(0.4 * KEEP_ALIVE_S)
        connection.sendall(REQUEST * 3)
        connection.settimeout(5)
        data = b""
        while data.count(b"\r\n\r\nok") < 3:
            chunk = connection.recv(4096)
            assert chunk, "closed before answering the pipelined requests"
            data += chunk
