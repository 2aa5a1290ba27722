"""``infaas serve --workers N``: the processes' catalog announcements, what is refused, and the environment they get."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from infaas.cli import serve_group
from infaas.config import Settings, get_settings
from infaas.process_group import (
    CatalogFile,
    catalog_file_path,
    check_serve_workers,
    group_environment,
    watch_catalog,
)
from infaas.services import Services, build_services
from tests.factories import TASK, mlp_model, profiles, seed_model, wait_for


def test_a_change_announced_by_one_process_reaches_the_other_once_and_not_itself(tmp_path: Path) -> None:
    path = tmp_path / "changes"
    a, b = CatalogFile(path), CatalogFile(path)
    heard: list[str] = []
    b.on_change(heard.append)
    a.changed("resnet")
    a.changed("odd name \n with a newline")
    assert a.poll() == []  # its own lines: its metadata listeners already ran
    assert b.poll() == ["resnet", "odd name \n with a newline"]
    assert heard == ["resnet", "odd name \n with a newline"]
    assert b.poll() == []


def test_a_half_written_line_waits_and_a_shrunk_file_invalidates_everything(tmp_path: Path) -> None:
    path = tmp_path / "changes"
    reader = CatalogFile(path)
    heard: list[str] = []
    reader.on_change(heard.append)
    line = (json.dumps(["other", "m"]) + "\n").encode()
    path.write_bytes(line[:7])
    assert reader.poll() == []
    with path.open("ab") as handle:
        handle.write(line[7:])
    assert reader.poll() == ["m"]
    path.write_bytes(b"")  # a new `infaas serve` group starts the file again
    assert reader.poll() == []
    assert heard == ["m", ""]


def test_a_process_skips_announcements_made_before_it_started(tmp_path: Path) -> None:
    path = tmp_path / "changes"
    CatalogFile(path).changed("before")
    late = CatalogFile(path)
    assert late.poll() == []


def test_a_non_positive_poll_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="poll_s"):
        CatalogFile(tmp_path / "changes", poll_s=0)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Services, Services, Settings]]:
    """Two embedded front-ends on one home, as two processes of ``infaas serve --workers 2`` are."""
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off", serve_workers=2)
    first = build_services(settings)
    second = build_services(settings, migrate=False)
    try:
        yield first, second, settings
    finally:
        second.close()
        first.close()


def test_a_model_registered_in_one_process_is_served_by_the_other(pair: tuple[Services, Services, Settings]) -> None:
    first, second, settings = pair
    watchers = [
        watch_catalog(settings, s.metadata.add_listener, s.engine.catalog_changed, s.engine.cache.catch_up_on_miss)
        for s in (first, second)
    ]
    try:
        assert second.engine.cache.for_model("mlp") == ()  # its index is built, and would stay stale
        model = mlp_model().SerializeToString()
        seed_model(first, "mlp", model, task=TASK, variants={"cpu-fp32": profiles({1: 0.1, 8: 0.4})})
        seen = wait_for(lambda: second.engine.cache.for_model("mlp"), timeout_s=5.0)
        assert [c.variant.name for c in seen] == ["cpu-fp32"]
    finally:
        for watcher in watchers:
            assert watcher is not None
            watcher.close()


def test_a_miss_reads_the_announcements_at_once(pair: tuple[Services, Services, Settings], tmp_path: Path) -> None:
    """No poller runs here: what the second process knows after the first's registration answered comes from
    reading the announcements on the miss itself (CI, session 8: a 404 on the other process after a 201)."""
    first, second, _ = pair
    path = tmp_path / "changes"
    announcer, listener = CatalogFile(path), CatalogFile(path)
    first.metadata.add_listener(announcer.changed)
    listener.on_change(second.engine.catalog_changed)
    assert second.engine.cache.model("mlp") is None  # its index is built before the model exists
    seed_model(first, "mlp", mlp_model().SerializeToString(), task=TASK, variants={"cpu-fp32": profiles({1: 0.1})})
    assert second.engine.cache.model("mlp") is None  # without catching up, stale until a poll
    second.engine.cache.catch_up_on_miss(listener.poll)
    model = second.engine.cache.model("mlp")
    assert model is not None and model.name == "mlp"
    assert [c.variant.name for c in second.engine.cache.for_model("mlp")] == ["cpu-fp32"]
    assert [m.name for m in second.engine.cache.models_for_task(TASK)] == ["mlp"]
    first.metadata.delete_model("mlp")
    assert second.engine.cache.model("mlp") is not None  # a hit does not read the file: the query path stays free
    assert listener.poll() and second.engine.cache.model("mlp") is None


def test_one_process_or_redis_needs_no_catalog_file(tmp_path: Path) -> None:
    def never(_: object) -> None:
        raise AssertionError("no listener expected")

    one = Settings(home=tmp_path, serve_workers=1)
    assert watch_catalog(one, never, never, never) is None
    redis = Settings(home=tmp_path, serve_workers=2, redis_url="redis://127.0.0.1:6379/0")
    assert watch_catalog(redis, never, never, never) is None


def test_what_several_processes_cannot_serve_is_refused(tmp_path: Path) -> None:
    embedded = Settings(home=tmp_path)
    check_serve_workers(embedded, 1)
    check_serve_workers(embedded, 4)
    with pytest.raises(ValueError, match="at least 1"):
        check_serve_workers(embedded, 0)
    with pytest.raises(ValueError, match="quotas"):
        check_serve_workers(Settings(home=tmp_path, admin_key="k" * 32), 2)
    redis = "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="INFAAS_IN_PROCESS_WORKER=false"):
        check_serve_workers(Settings(home=tmp_path, redis_url=redis), 2)
    check_serve_workers(Settings(home=tmp_path, redis_url=redis, in_process_worker=False, admin_key="k" * 32), 2)


def test_embedded_processes_split_the_cores_unless_told() -> None:
    settings = Settings(worker_cores=8)
    assert group_environment(settings, 2, {}) == {"INFAAS_SERVE_WORKERS": "2", "INFAAS_WORKER_CORES": "4"}
    assert group_environment(settings, 3, {"INFAAS_WORKER_CORES": "8"}) == {"INFAAS_SERVE_WORKERS": "3"}
    assert group_environment(Settings(worker_cores=2), 4, {})["INFAAS_WORKER_CORES"] == "1"
    assert group_environment(settings, 1, {}) == {"INFAAS_SERVE_WORKERS": "1"}


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


def test_serve_with_workers_migrates_once_and_starts_uvicorn_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    from infaas.cli.main import app

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *_a, **kw: seen.append(kw | {"workers": 1}))
    monkeypatch.setattr(serve_group, "run_group", lambda *_a, **kw: seen.append(kw))
    home = tmp_path / "home"
    monkeypatch.setenv("INFAAS_HOME", str(home))
    monkeypatch.delenv("INFAAS_REDIS_URL", raising=False)
    monkeypatch.delenv("INFAAS_ADMIN_KEY", raising=False)
    monkeypatch.setenv("INFAAS_WORKER_CORES", "2")
    monkeypatch.setenv("INFAAS_SERVE_WORKERS", "1")  # serve sets it for its processes; restored after the test
    catalog_file_path(home).parent.mkdir(parents=True)
    catalog_file_path(home).write_text('["old", "m"]\n')
    result = CliRunner().invoke(app, ["serve", "--port", "1", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert [kw["workers"] for kw in seen] == [2]
    assert (home / "infaas.db").exists()  # migrated here, before the processes start
    assert not catalog_file_path(home).exists()  # the previous group's announcements are gone

    seen.clear()
    monkeypatch.setenv("INFAAS_SERVE_WORKERS", "1")
    get_settings.cache_clear()
    assert CliRunner().invoke(app, ["serve", "--port", "1"]).exit_code == 0
    assert [kw["workers"] for kw in seen] == [1]


def test_serve_refuses_workers_with_keys_and_no_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    from infaas.cli.main import app

    monkeypatch.setattr(uvicorn, "run", lambda *_a, **_kw: pytest.fail("uvicorn must not start"))
    monkeypatch.setattr(serve_group, "run_group", lambda *_a, **_kw: pytest.fail("uvicorn must not start"))
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFAAS_REDIS_URL", raising=False)
    monkeypatch.setenv("INFAAS_ADMIN_KEY", "k" * 32)
    result = CliRunner().invoke(app, ["serve", "--port", "1", "--workers", "2"])
    assert result.exit_code == 2
    assert "quotas" in result.output


def test_connections_are_spread_over_the_processes_sockets() -> None:
    """One socket per process with SO_REUSEPORT: 32 connections opened at once reach both (with uvicorn's one
    shared socket, whichever process woke first accepted 16 of 16 from ``wrk``)."""
    listeners = serve_group.reuse_port_sockets("127.0.0.1", 0, 2)
    clients: list[socket.socket] = []
    try:
        port = listeners[0].getsockname()[1]
        assert listeners[1].getsockname()[1] == port
        for listener in listeners:  # already listening
            listener.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        accepted = [0, 0]
        deadline = time.monotonic() + 5
        while sum(accepted) < 32 and time.monotonic() < deadline:
            for index, listener in enumerate(listeners):
                try:
                    listener.accept()[0].close()
                    accepted[index] += 1
                except BlockingIOError:
                    pass
        assert sum(accepted) == 32
        assert min(accepted) >= 4, accepted  # binomial(32, 1/2): below 4 has probability 2e-6
    finally:
        for sock in clients + listeners:
            sock.close()


class _FakeProcess:
    def __init__(self, _config: object, sockets: list[object]) -> None:
        self.sockets, self.alive, self.pid, self.exitcode = sockets, True, 0, None

    def start(self) -> None: ...

    def is_alive(self, timeout: float) -> bool:
        return self.alive

    def kill(self) -> None:
        self.exitcode = -9

    def join(self) -> None: ...


def test_each_worker_keeps_its_own_socket_also_when_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_group, "Process", _FakeProcess)
    config = uvicorn.Config("api.app:create_app", factory=True, workers=3)
    sockets = [object(), object(), object()]
    supervisor = serve_group.ReusePortSupervisor(config, sockets)  # type: ignore[arg-type]
    supervisor.init_processes()
    assert [p.sockets for p in supervisor.processes] == [[s] for s in sockets]  # type: ignore[attr-defined]
    supervisor.processes[1].alive = False  # type: ignore[attr-defined]
    dead = supervisor.processes[1]
    supervisor.keep_subprocess_alive()
    assert supervisor.processes[1] is not dead
    assert [p.sockets for p in supervisor.processes] == [[s] for s in sockets]  # type: ignore[attr-defined]
