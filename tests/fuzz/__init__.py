"""Shared harness for the security tests and the fuzz runner: an auth-on app with tenants, and hostile models.

The security tests and ``run_fuzz.py`` must attack the same app the server builds, so both get it from
``secure_app`` here, which only adds what ``create_app`` does not wire yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from api.app import create_app
from infaas.auth import KeyRing
from infaas.config import Settings
from infaas.services import Services, build_services
from tests.factories import mlp_model

ADMIN_KEY = "root-admin-key-for-tests"


def secure_settings(home: Path, **overrides: object) -> Settings:
    """Auth on (an admin key is set), no background variant builds, no autoscaler."""
    fields: dict[str, object] = {"home": home, "admin_key": ADMIN_KEY, "build_variants": False, "autoscaler": "off"}
    fields.update(overrides)
    return Settings(**fields)


def secure_app(settings: Settings, services: Services) -> FastAPI:
    """``create_app`` with a key ring ready for tests that create keys before the lifespan runs."""
    return create_app(settings, services=services)


def served_routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(declared path, methods) of every route, included routers flattened.

    This FastAPI keeps an included router as one lazy entry in ``app.routes``, so scanning ``app.routes``
    for paths misses every included route.
    """
    return [
        (context.path, set(context.methods or ()))
        for context in iter_route_contexts(app.routes)
        if context.path is not None
    ]


def route_exists(app: FastAPI, path: str, method: str | None = None) -> bool:
    """Whether the app serves ``path`` (as declared, e.g. ``/v2/models/{name}/infer``)."""
    return any(p == path and (method is None or method in methods) for p, methods in served_routes(app))


@dataclass(frozen=True)
class Tenants:
    """Bearer headers of the admin and of two ordinary tenants, plus the revoked key of a third."""

    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    revoked: dict[str, str]
    alice_key_id: str


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for a key."""
    return {"Authorization": f"Bearer {secret}"}


def make_tenants(services: Services) -> Tenants:
    """Create keys directly on the key ring (the REST route is tested separately)."""
    ring: KeyRing = services.keyring
    alice = ring.create("alice")
    bob = ring.create("bob")
    carol = ring.create("carol")
    ring.revoke(carol.info.id)
    return Tenants(
        admin=bearer(ADMIN_KEY),
        alice=bearer(alice.secret),
        bob=bearer(bob.secret),
        revoked=bearer(carol.secret),
        alice_key_id=alice.info.id,
    )


@contextmanager
def secure_world(home: Path, **overrides: object) -> Iterator[tuple[TestClient, Services, Tenants]]:
    """The auth-on app of ``secure_settings(home, **overrides)`` behind a started client, with the tenants'
    keys; its services are closed on exit."""
    settings = secure_settings(home, **overrides)
    services = build_services(settings)
    try:
        with TestClient(secure_app(settings, services)) as client:
            yield client, services, make_tenants(services)
    finally:
        services.close()


def mlp_bytes(**kwargs: int) -> bytes:
    """A valid tiny model."""
    return mlp_model(**kwargs).SerializeToString()


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[TensorProto] | None = None,
) -> bytes:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _external(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros((4,), np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _vec(name: str, shape: list[int | str] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape or [4])


def hostile_models(seed: int = 0) -> dict[str, bytes]:
    """Uploads that must each be refused with a 4xx and leave nothing stored."""
    rng = np.random.default_rng(seed)
    valid = mlp_bytes()
    big_shape = numpy_helper.from_array(np.array([30000, 30000], dtype=np.int64), "s")
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["o"])], "then", [], [_vec("o")], [_external("w", "validation.npz")]
    )
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["o2"])], "else", [], [_vec("o2")])
    huge_initializer = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000])
    huge_initializer.raw_data = b"\0" * 16
    return {
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "truncated-tail": valid[:-7],
        "random-with-onnx-header": valid[:24] + rng.bytes(4000),
        "random-bytes": rng.bytes(4096),
        "text": b"import os; os.system('id')\n",
        "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.",
        "external-data-escape": _model(
            [helper.make_node("Add", ["x", "w"], ["y"])], [_vec("x")], [_vec("y")], [_external("w", "../../etc/passwd")]
        ),
        "external-data-absolute": _model(
            [helper.make_node("Add", ["x", "w"], ["y"])], [_vec("x")], [_vec("y")], [_external("w", "/etc/passwd")]
        ),
        "external-data-in-constant": _model(
            [
                helper.make_node("Constant", [], ["c"], value=_external("c", "../../etc/passwd")),
                helper.make_node("Add", ["x", "c"], ["y"]),
            ],
            [_vec("x")],
            [_vec("y")],
        ),
        "external-data-in-subgraph": _model(
            [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
            [_vec("x")],
            [_vec("y")],
            [numpy_helper.from_array(np.array(True), "cond")],
        ),
        "huge-initializer": _model(
            [helper.make_node("Add", ["x", "w"], ["y"])], [_vec("x", [1])], [_vec("y", [1])], [huge_initializer]
        ),
        "huge-declared-input": _model(
            [helper.make_node("Relu", ["x"], ["y"])], [_vec("x", [60000, 60000])], [_vec("y", [60000, 60000])]
        ),
        "huge-expand": _model(
            [helper.make_node("Expand", ["x", "s"], ["y"])], [_vec("x", [1])], [_vec("y", [1])], [big_shape]
        ),
        "huge-constant-of-shape": _model(
            [helper.make_node("ConstantOfShape", ["s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
            [_vec("x", [1])],
            [_vec("y", ["a", "b"])],
            [big_shape],
        ),
        "no-graph": onnx.ModelProto(ir_version=8).SerializeToString(),
    }


def random_header_bytes(rng: np.random.Generator, size: int) -> bytes:
    """Random bytes behind a valid model's first bytes (the fuzz runner draws many of these)."""
    return mlp_bytes()[: int(rng.integers(2, 64))] + rng.bytes(size)
