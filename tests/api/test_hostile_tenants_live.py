"""Issue 14, findings 3, 5, 12 and 13, reproduced against a real ``infaas serve`` process: refusals come
from the headers before any body is read (nothing written under the server's home, its memory flat),
the body limit holds whatever the Content-Type, early answers reach ``urllib``, local clients do not share
one concurrency bucket, a client vanishing mid-body logs nothing, and slow or huge headers are cut off;
the server keeps serving others throughout."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.factories import wait_for
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "live-admin-key-for-tests"
MB = 1_000_000
REGISTRATIONS_PER_HOUR = 2
HEADER_TIMEOUT_S = 1.0


@dataclass
class Server:
    """One ``infaas serve`` process with its own home (temporary uploads land there too: TMPDIR)."""

    port: int
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def home_bytes(self) -> int:
        """Bytes of every file under the home, database included."""
        return sum(p.stat().st_size for p in self.home.rglob("*") if p.is_file())

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, float]:
        """Status, JSON answer and seconds of a small request."""
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}"), time.perf_counter() - started
        finally:
            connection.close()


def _serve(tmp: Path, **env: str) -> Iterator[Server]:
    home = tmp / "home"
    (home / "tmp").mkdir(parents=True)
    log = tmp / "serve.log"
    port = free_port()
    settings = {
        "INFAAS_HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "INFAAS_AUTOSCALER": "off",
        "INFAAS_BUILD_VARIANTS": "false",
        "INFAAS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "INFAAS_MAX_REGISTRATIONS_PER_HOUR": str(REGISTRATIONS_PER_HOUR),
        **env,
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(port)],
            env={**base, **settings},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, home, log, process)

    def up() -> bool:
        try:
            return server.call("GET", "/v2/health/live")[0] == 200
        except OSError:
            return False

    try:
        assert wait_for(up, 30, interval_s=0.1), log.read_text()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # a test left a request hanging: uvicorn waits for it on SIGTERM
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """An auth-on server and the bearer header of tenant alice."""
    for server in _serve(tmp_path_factory.mktemp("secured"), INFAAS_ADMIN_KEY=ADMIN_KEY):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST", "/v1/admin/keys", body=json.dumps({"tenant": "alice"}), headers=admin)
        created = json.loads(connection.getresponse().read())
        connection.close()
        yield server, {"Authorization": f"Bearer {created['secret']}"}


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with authentication off (loopback clients only)."""
    yield from _serve(tmp_path_factory.mktemp("keyless"))


def _answer_to_headers(
    server: Server, path: str, headers: dict[str, str], length: int, method: str = "POST"
) -> tuple[int, dict, http.client.HTTPConnection]:
    """Send only the request line and headers (declaring ``length`` body bytes) and read the answer.

    An answer here proves the server decided from the headers alone: not one body byte was sent. The
    connection is returned open (the server may be draining it).
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(length)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = json.loads(response.read() or b"{}")
    return response.status, body, connection


def _urllib(server: Server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """What Python's ``urllib`` sees: it sends the whole body before it reads the answer."""
    request = urllib.request.Request(server.url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


class _Sampler:
    """The server's resident memory and home size, sampled in the background while an attack runs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rss = [server.rss()]
        self.home = [server.home_bytes()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.rss.append(self.server.rss())
            self.home.append(self.server.home_bytes())

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self) -> tuple[int, int]:
        """(peak RSS over the start, peak home bytes over the start)."""
        return max(self.rss) - self.rss[0], max(self.home) - self.home[0]


MULTIPART = {"Content-Type": "multipart/form-data; boundary=z"}


# -- finding 3: authentication (and quotas) before the body -----------------------------------------------------
def test_upload_with_a_fake_key_is_refused_before_any_byte_of_it(secured: tuple[Server, dict[str, str]]) -> None:
    server, _ = secured
    before = server.home_bytes()
    for headers in ({"Authorization": "Bearer fake"}, {}):
        status, body, connection = _answer_to_headers(server, "/v1/models", {**MULTIPART, **headers}, 150 * MB)
        connection.close()
        assert status == 401 and "API key" in body["detail"], body
    assert server.home_bytes() - before < 100_000


def test_80_concurrent_uploads_with_80_fake_tokens_store_nothing(secured: tuple[Server, dict[str, str]]) -> None:
    server, alice = secured

    def attack(i: int) -> int:
        status, _, connection = _answer_to_headers(
            server, "/v1/models", {**MULTIPART, "Authorization": f"Bearer fake-{i}"}, 20 * MB
        )
        connection.close()
        return status

    with _Sampler(server) as sampled, ThreadPoolExecutor(80) as pool:
        statuses = list(pool.map(attack, range(80)))
        status, _, seconds = server.call("GET", "/v1/models", alice)
    rss_growth, home_growth = sampled.growth()
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 8, statuses
    assert status == 200 and seconds < 2.0, (status, seconds)
    assert home_growth < 100_000, home_growth
    assert rss_growth < 50 * MB, rss_growth


def test_requests_without_a_valid_key_share_one_small_bucket(secured: tuple[Server, dict[str, str]]) -> None:
    """Each refused request whose body fits the body limit holds a slot while that body drains: the
    ninth at once is 429 (INFAAS_MAX_CONCURRENT_UNAUTHENTICATED defaults to 8), keyed tenants are unaffected,
    and the slots come back when the drains end."""
    server, alice = secured
    held = []
    try:
        for i in range(8):
            status, _, connection = _answer_to_headers(server, "/v1/infer", {"Authorization": f"Bearer f{i}"}, MB)
            assert status == 401
            held.append(connection)
        status, body, connection = _answer_to_headers(server, "/v1/infer", {"Authorization": "Bearer f9"}, MB)
        connection.close()
        assert status == 429 and "INFAAS_MAX_CONCURRENT_UNAUTHENTICATED" in body["detail"], body
        assert server.call("GET", "/v1/models", alice)[0] == 200
    finally:
        for connection in held:
            connection.close()

    def refused_with_401() -> bool:
        status, _, connection = _answer_to_headers(server, "/v1/infer", {"Authorization": "Bearer again"}, 10)
        connection.close()
        return status == 401

    assert wait_for(refused_with_401, 5)


def test_registration_quota_is_checked_before_the_upload(secured: tuple[Server, dict[str, str]]) -> None:
    server, alice = secured
    for _ in range(REGISTRATIONS_PER_HOUR):  # attempts count, even ones that fail their checks
        status, _ = _urllib(server, "/v1/models", b"--z--\r\n", {**alice, **MULTIPART})
        assert status == 422, status  # no model file
    before = server.home_bytes()
    status, body, connection = _answer_to_headers(server, "/v1/models", {**MULTIPART, **alice}, 150 * MB)
    connection.close()
    assert status == 429 and "INFAAS_MAX_REGISTRATIONS_PER_HOUR" in body["detail"], body
    assert server.home_bytes() - before < 100_000


# -- finding 5: the body limit whatever the Content-Type ------------------------------------------------------
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=z", "Multipart/Form-Data", "multipart/mixed"])
def test_infer_body_over_the_limit_is_413_whatever_the_content_type(
    secured: tuple[Server, dict[str, str]], content_type: str
) -> None:
    server, alice = secured
    with _Sampler(server) as sampled:
        for size in (17 * MB, 190 * MB):
            headers = {**alice, "Content-Type": content_type}
            status, body, connection = _answer_to_headers(server, "/v1/infer", headers, size)
            connection.close()
            assert status == 413 and "limit" in body["detail"], body
    assert sampled.growth()[0] < 20 * MB


# -- finding 13: early answers reach urllib -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [2 * MB, 6 * MB])
def test_urllib_receives_the_early_404_for_an_unknown_model(secured: tuple[Server, dict[str, str]], size: int) -> None:
    server, alice = secured
    headers = {**alice, "Content-Type": "application/json"}
    status, body = _urllib(server, "/v2/models/alice.nope/infer", b" " * size, headers)
    assert status == 404 and "nope" in body["error"], body


def test_urllib_receives_the_early_401_for_an_upload_with_a_fake_key(secured: tuple[Server, dict[str, str]]) -> None:
    server, _ = secured
    before = server.home_bytes()
    status, body = _urllib(server, "/v1/models", b"x" * (2 * MB), {**MULTIPART, "Authorization": "Bearer fake"})
    assert status == 401 and "API key" in body["detail"], body
    assert server.home_bytes() - before < 100_000


@pytest.mark.parametrize("size", [2 * MB, 6 * MB])
def test_urllib_receives_early_answers_without_a_key_configured(keyless: Server, size: int) -> None:
    status, body = _urllib(keyless, "/v2/models/nope/infer", b" " * size, {"Content-Type": "application/json"})
    assert status == 404 and "nope" in body["error"], body


# -- finding 12: local clients, vanishing clients, slow headers ---------------------------------------------------
def test_stalled_local_client_does_not_starve_other_local_clients(keyless: Server) -> None:
    """70 requests stalled mid-body (over the 64 of INFAAS_MAX_CONCURRENT_PER_KEY) on 70 connections."""
    stalled = []
    try:
        for _ in range(70):
            connection = socket.create_connection(("127.0.0.1", keyless.port))
            connection.sendall(
                b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            stalled.append(connection)
        time.sleep(0.2)  # let the server start every stalled request
        status, body, seconds = keyless.call("GET", "/v1/models", {"Host": "127.0.0.1"})
        assert status == 200 and seconds < 2.0, (status, body, seconds)
    finally:
        for connection in stalled:
            connection.close()


def test_client_leaving_mid_body_is_not_logged_as_an_error(keyless: Server) -> None:
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", keyless.port)) as connection:
            connection.sendall(
                b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b" " * 1000
            )
            time.sleep(0.01)
    assert keyless.call("GET", "/v1/models")[0] == 200
    log = keyless.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log and "Exception in ASGI" not in log, log[-2000:]


def _closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(0.01)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def test_slow_loris_connections_are_closed_after_the_header_timeout(keyless: Server) -> None:
    loris = [socket.create_connection(("127.0.0.1", keyless.port)) for _ in range(200)]
    try:
        for connection in loris:
            connection.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert keyless.call("GET", "/v1/models")[0] == 200  # others are served meanwhile

        def still_open() -> list[socket.socket]:
            return [c for c in loris if not _closed_by_server(c)]

        remaining = wait_for(still_open, HEADER_TIMEOUT_S + 5, until=lambda left: not left, interval_s=0.1)
        assert remaining == [], f"{len(remaining)} of 200 slow connections still open"
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
    finally:
        for connection in loris:
            connection.close()


def test_oversized_headers_close_the_connection(keyless: Server) -> None:
    with socket.create_connection(("127.0.0.1", keyless.port)) as connection:
        connection.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for _ in range(100):
                connection.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass  # closed while sending
        assert wait_for(lambda: _closed_by_server(connection), 3)
    assert keyless.call("GET", "/v1/models")[0] == 200
