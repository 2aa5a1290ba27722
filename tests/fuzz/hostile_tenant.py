"""The "hostile tenant" suite (issue 14): the reproduced requests of items 6 and 8-12, and random variations of
each, so that a fix that only blocks the exact bytes tried there fails here.

Every probe says which statuses are the safe outcome. After each one the suite checks that no model, file or
key appeared or disappeared and that the server still answers. ``run_hostile_tenant(rounds, seed)`` sends the
reproduced cases once and ``rounds`` random variations of every family; ``run_fuzz.py`` runs it with a large
budget, ``tests/api/test_hostile_tenant_fuzz.py`` with a small one under ``make test``.
"""

from __future__ import annotations

import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from api.app import create_app
from infaas.cli.main import forwarded_header_options
from infaas.config import Settings
from infaas.services import Services, build_services
from tests.factories import TASK, linear_model, mlp_model, profiles, seed_model, wait_for
from tests.fuzz import ADMIN_KEY, Tenants, make_tenants, secure_app, secure_settings

LOCAL_URL = "http://127.0.0.1:8000"
LOCAL_PEER = ("127.0.0.1", 40000)
FORBIDDEN, NOT_FOUND = {403}, {404}
CLIENT_ERROR = set(range(400, 500))
_PROFILES = {"fp32": profiles({1: 0.1, 4: 0.4}, memory_mb=20.0)}


def gather_model() -> bytes:
    """y = table[i] over a 4-value table: an index past the table fails inside ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass(frozen=True)
class Probe:
    """One request, the app it goes to (``keyless`` or ``secure``) and the statuses that are safe."""

    label: str
    app: str
    method: str
    path: str
    safe: set[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    check: Callable[[httpx.Response], str | None] | None = None  # a further condition on the answer


# -- the families: item 6 (cross-site, DNS rebinding) ----------------------------------------------------------
_INFER = orjson.dumps({"model": "tiny", "inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}})


def _state_changes(headers: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """The key-less server's state-changing requests a page can send without a CORS preflight."""
    model = ("m.onnx", mlp_model().SerializeToString(), "application/octet-stream")
    return [
        ("POST", "/v1/infer", {"content": _INFER, "headers": {**headers, "Content-Type": "text/plain"}}),
        (
            "POST",
            "/v1/models",
            {"data": {"name": "planted", "task": TASK}, "files": {"model": model}, "headers": headers},
        ),
        ("POST", "/v1/models/tiny/profile", {"headers": headers}),
        ("DELETE", "/v1/models/tiny", {"headers": headers}),
        ("POST", "/console/actions/delete", {"data": {"name": "tiny", "confirmed": "yes"}, "headers": headers}),
        ("POST", "/console/actions/drain", {"data": {"worker": "local", "confirmed": "yes"}, "headers": headers}),
    ]


def _random_site(rng: np.random.Generator) -> str:
    word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789-"), int(rng.integers(1, 12))))
    return str(
        rng.choice(
            [
                f"{word}.example",
                f"127.0.0.1.{word}.example",
                f"localhost.{word}",
                f"{word}.localhost.{word}.com",
                f"10.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}",
                f"192.168.{rng.integers(0, 256)}.{rng.integers(1, 255)}",
                "0.0.0.0",
                "[fe80::1]",
                f"xn--{word}",
            ]
        )
    )


def _random_origin(rng: np.random.Generator) -> str:
    scheme = str(rng.choice(["http", "https", "HTTP", "file", "chrome-extension"]))
    port = "" if rng.random() < 0.5 else f":{int(rng.integers(1, 65536))}"
    if rng.random() < 0.15:
        return "null"
    if rng.random() < 0.2:  # the server's own host on another port: another origin
        return f"{scheme}://127.0.0.1:{8001 + int(rng.integers(0, 1000))}"
    return f"{scheme}://{_random_site(rng)}{port}"


def cross_site(rng: np.random.Generator | None) -> list[Probe]:
    """Item 6: state changes a web page makes the local browser send to a key-less server."""
    variants = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}]
    if rng is not None:
        variants = [
            {"Origin": _random_origin(rng)}
            if rng.random() < 0.7
            else {"Sec-Fetch-Site": str(rng.choice(["cross-site", "CROSS-SITE", " cross-site "]))}
        ]
    return [
        Probe(f"cross-site {method} {path} {headers}", "keyless", method, path, FORBIDDEN, kwargs)
        for headers in variants
        for method, path, kwargs in _state_changes(headers)
    ]


def dns_rebinding(rng: np.random.Generator | None) -> list[Probe]:
    """Item 6: a page whose name now points at 127.0.0.1 reads a session and posts with it."""
    hosts = ["evil.example"]
    if rng is not None:
        host = _random_site(rng)
        hosts = [host + ("" if rng.random() < 0.5 else f":{int(rng.integers(1, 65536))}")]
        hosts += [str(rng.choice(["", "[::1", "[::1]x", "localhost:port", "127.0.0.1:80:80"]))]

    def no_session(response: httpx.Response) -> str | None:
        leaked = "set-cookie" in response.headers or 'name="csrf"' in response.text
        return "a session or CSRF token was handed out" if leaked else None

    probes = []
    for host in hosts:
        headers = {"Host": host}
        probes.append(
            Probe(
                f"rebinding GET /console/actions Host {host!r}",
                "keyless",
                "GET",
                "/console/actions",
                FORBIDDEN,
                {"headers": headers},
                no_session,
            )
        )
        probes.append(
            Probe(
                f"rebinding GET /v1/models Host {host!r}",
                "keyless",
                "GET",
                "/v1/models",
                FORBIDDEN,
                {"headers": headers},
            )
        )
        probes += [
            Probe(f"rebinding {method} {path} Host {host!r}", "keyless", method, path, FORBIDDEN, kwargs)
            for method, path, kwargs in _state_changes(headers)
        ]
    return probes


# -- item 8: reserved tenant names ------------------------------------------------------------------------------
def reserved_tenants(rng: np.random.Generator | None) -> list[Probe]:
    names = ["admin", "local"]
    if rng is not None:
        names = ["".join(c.upper() if rng.random() < 0.5 else c for c in str(rng.choice(names)))]
    return [
        Probe(
            f"key for reserved tenant {name!r} admin={admin}",
            "secure",
            "POST",
            "/v1/admin/keys",
            {400},
            {"json": {"tenant": name, "admin": admin}, "headers": "admin"},
        )
        for name in names
        for admin in (False, True)
    ]


# -- item 9: hidden names answer like missing ones --------------------------------------------------------------
def hidden_names(rng: np.random.Generator | None) -> list[Probe]:
    targets = ["alice.private", "admins-private", "locals-private"]
    missing = "alice.nothing"
    if rng is not None:
        missing = f"alice.{rng.integers(0, 10**9)}"
    suffixes = [("GET", ""), ("GET", "/variants"), ("POST", "/profile"), ("DELETE", "")]
    probes = []
    for target in targets:
        for method, suffix in suffixes:

            def same_as_missing(response: httpx.Response, target: str = target) -> str | None:
                expected = {"detail": f"model {target!r} not found", "code": "not_found"}
                return None if response.json() == expected else f"answer differs from a missing name's: {response.text}"

            probes.append(
                Probe(
                    f"bob {method} {target}{suffix}",
                    "secure",
                    method,
                    f"/v1/models/{target}{suffix}",
                    NOT_FOUND,
                    {"headers": "bob"},
                    same_as_missing,
                )
            )
        probes.append(
            Probe(f"bob GET {missing}", "secure", "GET", f"/v1/models/{missing}", NOT_FOUND, {"headers": "bob"})
        )
    return probes


# -- item 10: what used to be 500s ------------------------------------------------------------------------------
_CONTROL = ["\n", "\r\n", "\r", "\t", "\x0b", "\x0c", " ", "\u2028", "\x85"]


def bad_names(rng: np.random.Generator | None) -> list[Probe]:
    names = ["model\n"]
    if rng is not None:
        base = "m" + "".join(rng.choice(list("abc123._-"), int(rng.integers(0, 20))))
        control = str(rng.choice(_CONTROL))
        names = [str(rng.choice([base + control, control + base, base[:1] + control + base[1:]]))]
    model = ("m.onnx", mlp_model().SerializeToString(), "application/octet-stream")
    return [
        Probe(
            f"register name {name!r}",
            "secure",
            "POST",
            "/v1/models",
            {400},
            {"data": {"name": name, "task": TASK}, "files": {"model": model}, "headers": "alice"},
        )
        for name in names
    ]


def oip_shapes(rng: np.random.Generator | None) -> list[Probe]:
    shapes: list[tuple[list[int], bool]] = [([4294967296, 4294967296, 0], False), ([0, 2**62], True)]
    if rng is not None:
        rank = int(rng.integers(2, 6))
        shape = [int(2 ** rng.integers(31, 64)) for _ in range(rank)]
        shape[int(rng.integers(0, rank))] = 0
        shapes = [(shape, bool(rng.random() < 0.5))]
    probes = []
    for shape, binary in shapes:
        tensor: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": shape}
        if binary:
            tensor["parameters"] = {"binary_data_size": 0}
        else:
            tensor["data"] = []
        body = orjson.dumps({"inputs": [tensor]})
        headers: dict[str, str] = {"Inference-Header-Content-Length": str(len(body))} if binary else {}
        probes.append(
            Probe(
                f"OIP shape {shape} binary={binary}",
                "secure",
                "POST",
                "/v2/models/alice.tiny/infer",
                {400},
                {"content": body, "headers": ("alice", headers)},
            )
        )
    return probes


def runtime_failures(rng: np.random.Generator | None) -> list[Probe]:
    indices = [[1, 99]]
    if rng is not None:
        bad = int(rng.choice([rng.integers(4, 2**62), -int(rng.integers(5, 2**62))]))
        indices = [[int(i) for i in rng.integers(0, 4, int(rng.integers(0, 4)))] + [bad]]

    def says_why(response: httpx.Response) -> str | None:
        return None if "could not run on this input" in response.text else f"no runtime message: {response.text}"

    return [
        Probe(
            f"gather at {i}",
            "secure",
            "POST",
            "/v1/infer",
            {400},
            {"json": {"model": "alice.gather", "inputs": {"i": i}}, "headers": "alice"},
            says_why,
        )
        for i in indices
    ]


def console_paths(rng: np.random.Generator | None) -> list[Probe]:
    names = ["..", "a/../../b"]
    if rng is not None:
        parts = ["..", ".", "a", "models", "", "%2e%2e", "\\..", "tiny", "..\\.."]
        names = ["/".join(str(p) for p in rng.choice(parts, int(rng.integers(1, 6))))]
    return [
        Probe(
            f"console delete {name!r}",
            "secure",
            "POST",
            "/console/actions/delete",
            {400, 404, 422},
            {"data": {"name": name, "confirmed": "yes"}, "headers": "admin"},
        )
        for name in names
        if name not in ("tiny",)
    ]


FAMILIES: tuple[Callable[[np.random.Generator | None], list[Probe]], ...] = (
    cross_site,
    dns_rebinding,
    reserved_tenants,
    hidden_names,
    bad_names,
    oip_shapes,
    runtime_failures,
    console_paths,
)


# -- the worlds the probes are sent to --------------------------------------------------------------------------
@dataclass
class _World:
    client: TestClient
    services: Services
    tenants: Tenants | None

    def fingerprint(self) -> tuple[object, ...]:
        """What a refused probe must leave as it was: models, stored files, keys."""
        return (
            sorted(m.name for m in self.services.metadata.list_models()),
            sorted(self.services.store.list("models/")),
            sorted(k.id for k in self.services.metadata.list_api_keys()),
        )


@contextmanager
def _worlds(home: Path) -> Iterator[dict[str, _World]]:
    keyless_settings = Settings(home=home / "keyless", build_variants=False, autoscaler="off")
    keyless = build_services(keyless_settings)
    secure_settings_ = secure_settings(home / "secure")
    secure = build_services(secure_settings_)
    try:
        seed_model(keyless, "tiny", linear_model(4, 3), task=TASK, variants=_PROFILES)
        seed_model(secure, "alice.private", linear_model(4, 3), task=TASK, owner="alice", variants=_PROFILES)
        seed_model(secure, "alice.tiny", linear_model(4, 3), task=TASK, owner="alice", variants=_PROFILES)
        seed_model(secure, "alice.gather", gather_model(), task=TASK, owner="alice", variants=_PROFILES)
        seed_model(secure, "admins-private", linear_model(4, 3), task=TASK, owner="admin", variants=_PROFILES)
        seed_model(secure, "locals-private", linear_model(4, 3), task=TASK, owner="local", variants=_PROFILES)
        seed_model(secure, "tiny", linear_model(4, 3), task=TASK, owner="admin", variants=_PROFILES)
        with (
            TestClient(create_app(keyless_settings, services=keyless), base_url=LOCAL_URL, client=LOCAL_PEER) as local,
            TestClient(secure_app(secure_settings_, secure)) as remote,
        ):
            yield {"keyless": _World(local, keyless, None), "secure": _World(remote, secure, make_tenants(secure))}
    finally:
        keyless.close()
        secure.close()


def _headers(world: _World, spec: object) -> dict[str, str]:
    """A probe's headers: a dict, a tenant's name ("admin", "alice", "bob"), or (tenant, extra headers)."""
    if isinstance(spec, dict):
        return spec
    tenant, extra = spec if isinstance(spec, tuple) else (spec, {})
    assert world.tenants is not None
    return {**getattr(world.tenants, tenant), **extra}


def _send(world: _World, probe: Probe) -> str | None:
    """Send one probe; the failure, or ``None`` when the outcome was safe."""
    before = world.fingerprint()
    kwargs = dict(probe.kwargs)
    kwargs["headers"] = _headers(world, kwargs.get("headers", {}))
    response = world.client.request(probe.method, probe.path, follow_redirects=False, **kwargs)
    if response.status_code not in probe.safe:
        return f"{probe.label}: {response.status_code} {response.text[:200]}"
    problem = probe.check(response) if probe.check is not None else None
    if problem:
        return f"{probe.label}: {problem}"
    if world.fingerprint() != before:
        return f"{probe.label}: a model, file or key was added or removed"
    health = world.client.get("/v1/models", headers=_headers(world, "alice" if world.tenants else {}))
    if health.status_code != 200:
        return f"{probe.label}: the server stopped serving ({health.status_code})"
    return None


def run_hostile_tenant(rounds: int, seed: int) -> dict[str, object]:
    """The reproduced cases once, then ``rounds`` random variations of every family; failures listed."""
    rng = np.random.default_rng(seed)
    probes = [p for family in FAMILIES for p in family(None)]
    probes += [p for _ in range(rounds) for family in FAMILIES for p in family(rng)]
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="infaas-hostile-") as home, _worlds(Path(home)) as worlds:
        for probe in probes:
            failure = _send(worlds[probe.app], probe)
            if failure:
                failures.append(failure)
    forwarded = run_forwarded(rounds, seed)
    return {"probes": len(probes) + forwarded["requests"], "failures": failures + forwarded["failures"]}


# -- items 11 and 12: forwarded headers, against a real uvicorn with ``infaas serve``'s options ----------------
@contextmanager
def serve_in_thread(app: FastAPI, proxy_options: dict[str, object]) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **proxy_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 30, interval_s=0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _random_forwarded(rng: np.random.Generator) -> str:
    choices = [
        f"198.51.100.{rng.integers(0, 256)}",
        f"2001:db8::{rng.integers(0, 65536):x}",
        "testclient",
        "localhost",
        "127.0.0.1",
        "::1",
        f"{_random_site(rng)}",
        f"127.0.0.1, 203.0.113.{rng.integers(0, 256)}",
    ]
    return str(rng.choice(choices))


def run_forwarded(rounds: int, seed: int) -> dict[str, Any]:
    """Wrong console keys with a fresh X-Forwarded-For each: throttled all the same, and the admin key still
    signs in; a key-less server behind a trusted proxy never takes a forwarded name for loopback."""
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    requests = 0
    with tempfile.TemporaryDirectory(prefix="infaas-forwarded-") as home:
        settings = secure_settings(Path(home) / "secure")
        services = build_services(settings)
        try:
            app = secure_app(settings, services)
            with serve_in_thread(app, forwarded_header_options("")) as url, httpx.Client(base_url=url) as http:
                limit = settings.console_signin_failures
                for attempt in range(limit + 5 + rounds):
                    forwarded = _random_forwarded(rng)
                    status = http.post(
                        "/console/login", data={"key": f"guess-{attempt}"}, headers={"X-Forwarded-For": forwarded}
                    ).status_code
                    requests += 1
                    if status != (401 if attempt < limit else 429):
                        failures.append(f"wrong key {attempt} forwarded as {forwarded!r}: {status}")
                admin = http.post("/console/login", data={"key": ADMIN_KEY}, follow_redirects=False)
                requests += 1
                if admin.status_code != 303:
                    failures.append(f"the admin key did not sign in from a throttled address: {admin.status_code}")
        finally:
            services.close()
        keyless_settings = Settings(
            home=Path(home) / "keyless", build_variants=False, autoscaler="off", trusted_proxies="127.0.0.1"
        )
        keyless = build_services(keyless_settings)
        try:
            app = create_app(keyless_settings, services=keyless)
            with serve_in_thread(app, forwarded_header_options("127.0.0.1")) as url, httpx.Client(base_url=url) as http:
                for _ in range(3 + rounds):
                    forwarded = _random_forwarded(rng)
                    status = http.get("/v1/models", headers={"X-Forwarded-For": forwarded}).status_code
                    requests += 1
                    last = forwarded.split(",")[-1].strip()
                    expected = 200 if re.fullmatch(r"127\.0\.0\.1|::1", last) else 403
                    if status != expected:
                        failures.append(f"key-less, forwarded as {forwarded!r}: {status}, expected {expected}")
        finally:
            keyless.close()
    return {"requests": requests, "failures": failures}
