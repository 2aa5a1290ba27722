"""The admin console in real headless Chromium, against a live uvicorn server with real variant builds.

One server per module: a tiny MLP is registered through the REST API with variant builds on and
profiled for real, so the scatter plot is checked against the profiles the API reports. Screenshots
of every page go to ``test-output/console/`` (git-ignored).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from api.app import create_app
from infaas.config import Settings
from infaas.services import Services
from tests.factories import upload_model, wait_for, write_mlp, write_validation

pytestmark = pytest.mark.browser

ADMIN_KEY = "console-test-admin-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "console"
MODEL = "mlp"
PAGES = {
    "models": "/console",
    "model": f"/console/models/{MODEL}",
    "workers": "/console/workers",
    "live": "/console/live",
    "decisions": "/console/decisions",
    "queries": "/console/queries",
    "actions": "/console/actions",
}


class ConsoleServer:
    """A uvicorn server on a free loopback port, in a thread, with one registered and built model."""

    def __init__(self, home: Path, admin_key: str | None = ADMIN_KEY) -> None:
        self.home = home
        self.admin_key = admin_key
        settings = Settings(home=home / "home", admin_key=admin_key, build_variants=True, autoscaler="off")
        self.app = create_app(settings)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, name="console-uvicorn", daemon=True)
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def services(self) -> Services:
        """The server's services (shared in-process: the test may read live state directly)."""
        return self.app.state.services

    def start(self) -> None:
        """Serve, and return once the port answers."""
        self._thread.start()
        wait_for(lambda: self._server.started or not self._thread.is_alive(), 30, interval_s=0.02)
        assert self._server.started, "uvicorn did not start"

    def stop(self) -> None:
        """Shut the server down (the lifespan closes the services)."""
        self.http.close()
        self._server.should_exit = True
        self._thread.join(15)

    def register(self, name: str, task: str = "classify", seed: int = 0) -> None:
        """Register the tiny MLP with a validation set through the REST API."""
        model = write_mlp(self.home / f"{name}.onnx", seed=seed)
        validation = write_validation(self.home / f"{name}.npz")
        response = upload_model(self.http, name, model.read_bytes(), validation=validation.read_bytes(), task=task)
        assert response.status_code == 201, response.text

    def wait_built(self, name: str, timeout_s: float = 120.0) -> dict:
        """The model's description once no variant is still being built."""

        def built(body: dict) -> bool:
            counts = body["variant_counts"]
            return body["status"] not in {"registered", "building"} and bool(counts["ready"]) and not counts["building"]

        body = wait_for(lambda: self.http.get(f"/v1/models/{name}").json(), timeout_s, until=built, interval_s=0.5)
        assert built(body), f"{name} was not built in time: {body['status']} {body['variant_counts']}"
        return body

    def infer(self, name: str, rows: int = 1) -> None:
        """One query through the real query path."""
        response = self.http.post(
            "/v1/infer", json={"model": name, "inputs": {"x": [[0.1] * 8] * rows}, "latency_ms": 500}
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    running = ConsoleServer(tmp_path_factory.mktemp("console"))
    running.start()
    try:
        running.register(MODEL)
        running.wait_built(MODEL)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make browser)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def sign_in(page: Page, server: ConsoleServer, key: str = ADMIN_KEY) -> None:
    """Use the sign-in form as a person would."""
    page.goto(f"{server.url}/console/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


@pytest.fixture
def page(browser: Browser, server: ConsoleServer) -> Iterator[Page]:
    """A signed-in page that fails the test on any console error or uncaught exception."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    signed_in = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text} at {message.location}")

    def on_page_error(error: Error) -> None:
        errors.append(f"page error: {error}")

    signed_in.on("console", on_console)
    signed_in.on("pageerror", on_page_error)
    sign_in(signed_in, server)
    signed_in.wait_for_url(f"{server.url}/console")
    yield signed_in
    context.close()
    assert not errors, errors


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot under ``test-output/console/``."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_every_page_loads_without_console_errors(page: Page, server: ConsoleServer) -> None:
    server.infer(MODEL)  # something on the workers, live and queries pages
    for name, path in PAGES.items():
        response = page.goto(server.url + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        page.wait_for_load_state("networkidle")
        assert page.locator("h1").first.is_visible()
        shot(page, name)
    assert Path(OUTPUT / "model.png").stat().st_size > 10_000


def test_scatter_plots_one_point_per_profiled_variant_and_batch(page: Page, server: ConsoleServer) -> None:
    described = server.http.get(f"/v1/models/{MODEL}").json()
    profiles = [(v["name"], p["batch_size"]) for v in described["variants"] for p in v["profiles"]]
    assert len(profiles) >= 2

    page.goto(f"{server.url}/console/models/{MODEL}")
    image = page.locator("img#scatter")
    image.wait_for()
    assert page.evaluate("document.getElementById('scatter').naturalWidth") > 0, "the chart did not load"
    assert int(image.get_attribute("data-points") or -1) == len(profiles)
    rows = page.locator("table#points tbody tr.point")
    assert rows.count() == len(profiles)
    shown = sorted(
        (r[0], int(r[1])) for r in (rows.nth(i).locator("td").all_inner_texts()[:2] for i in range(rows.count()))
    )
    assert shown == sorted(profiles)
    assert page.locator("table#points tr.pareto").count() >= 1  # the Pareto front is marked

    svg = server.http.get(f"/console/models/{MODEL}/scatter.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "Pareto front" in svg.text
    # Every variant row shows its build status, failed or skipped ones with their reason.
    for variant in described["variants"]:
        row = page.locator(f'table#variants tr[data-variant="{variant["name"]}"]')
        assert row.get_attribute("data-status") == variant["status"]
        if variant["status"] in {"failed", "skipped"}:
            assert (variant["reason"] or "")[:30] in row.inner_text()
    shot(page, "model-scatter")


def test_live_page_changes_after_queries(page: Page, server: ConsoleServer) -> None:
    page.goto(f"{server.url}/console/live")
    before = int(page.locator("#live-total").get_attribute("data-total") or 0)
    for _ in range(5):
        server.infer(MODEL, rows=2)
    page.wait_for_function(
        "before => Number(document.getElementById('live-total').dataset.total) >= before + 5",
        arg=before,
        timeout=10_000,
    )
    assert page.locator(f'table#live tbody tr[data-variant^="{MODEL}/"]').count() >= 1
    assert page.url.endswith("/console/live")  # refreshed in place, not reloaded
    shot(page, "live-after-queries")


def test_unauthenticated_requests_get_401(server: ConsoleServer) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        for path in [*PAGES.values(), "/console/api/live", f"/console/models/{MODEL}/scatter.svg"]:
            assert anonymous.get(path).status_code == 401, path
        page = anonymous.get("/console")
        assert page.headers["content-type"].startswith("text/html") and 'action="/console/login"' in page.text
        assert anonymous.post("/console/actions/delete", data={"name": MODEL, "confirmed": "yes"}).status_code == 401
        assert anonymous.post("/console/login", data={"key": "wrong"}).status_code == 401
    with httpx.Client(base_url=server.url, cookies={"infaas_console": "abc.1.-.0000"}) as forged:
        assert forged.get("/console").status_code == 401
    assert server.http.get(f"/v1/models/{MODEL}").status_code == 200
    # A bearer admin key works for scripts.
    assert server.http.get("/console/api/live").status_code == 200


def test_tenant_keys_are_refused(server: ConsoleServer) -> None:
    secret = server.services.keyring.create("tenant-a").secret
    with httpx.Client(base_url=server.url) as tenant:
        assert tenant.get("/console", headers={"Authorization": f"Bearer {secret}"}).status_code == 403
        refused = tenant.post("/console/login", data={"key": secret}, follow_redirects=False)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers


def test_forms_need_the_session_csrf_token(server: ConsoleServer) -> None:
    with httpx.Client(base_url=server.url) as browserless:
        login = browserless.post("/console/login", data={"key": ADMIN_KEY}, follow_redirects=False)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        actions = browserless.get("/console/actions")
        token = re.search(r'name="csrf" value="([^"]+)"', actions.text)
        assert token is not None
        for bad in ["", "not-the-token"]:
            refused = browserless.post("/console/actions/delete", data={"name": MODEL, "confirmed": "yes", "csrf": bad})
            assert refused.status_code == 403
        cross_site = browserless.post(
            "/console/actions/delete",
            data={"name": MODEL, "confirmed": "yes", "csrf": token.group(1)},
            headers={"Origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403
        # Without confirmation the action only asks.
        asked = browserless.post("/console/actions/delete", data={"name": MODEL, "csrf": token.group(1)})
        assert asked.status_code == 200 and 'name="confirmed" value="yes"' in asked.text
    assert server.http.get(f"/v1/models/{MODEL}").status_code == 200


def test_register_then_delete_from_the_console(page: Page, server: ConsoleServer, tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "doomed.onnx", seed=3)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{server.url}/console/actions")
    form = page.locator("#register-form")
    form.locator("input[name=name]").fill("doomed")
    form.locator("input[name=task]").fill("classify")
    form.locator("input[name=model]").set_input_files(str(model))
    form.locator("input[name=accuracy]").fill("0.8")
    form.locator("button[type=submit]").click()
    assert page.locator("#result").get_attribute("data-ok") == "true", page.locator("#result").inner_text()
    server.wait_built("doomed")

    page.goto(f"{server.url}/console/actions")
    page.select_option("#delete-form select[name=name]", "doomed")
    page.click("#delete-form button[type=submit]")
    result = page.locator("#result")
    assert result.get_attribute("data-ok") == "true" and "doomed" in result.inner_text()
    shot(page, "delete-result")
    assert server.http.get("/v1/models/doomed").status_code == 404
    page.goto(f"{server.url}/console")
    assert page.locator('tr[data-model="doomed"]').count() == 0
    assert page.locator(f'tr[data-model="{MODEL}"]').count() == 1


def test_unload_and_drain_from_the_console(page: Page, server: ConsoleServer) -> None:
    server.infer(MODEL)
    live = server.services.live
    loaded = [i for i in live.instances() if i.variant_key.startswith(f"{MODEL}/")]
    assert loaded
    target = loaded[0]
    page.on("dialog", lambda dialog: dialog.accept())

    page.goto(f"{server.url}/console/actions")
    page.locator(
        f'form[action="/console/actions/unload"]:has(input[name=variant][value="{target.variant_key}"]) button'
    ).click()
    assert page.locator("#result").get_attribute("data-ok") == "true"
    assert target.variant_key not in {i.variant_key for i in live.instances(target.worker_id)}

    page.goto(f"{server.url}/console/actions")
    page.locator(f'[data-worker="{target.worker_id}"] form[action="/console/actions/drain"] button').click()
    assert page.locator("#result").get_attribute("data-ok") == "true"
    assert next(w for w in live.workers() if w.id == target.worker_id).draining
    page.goto(f"{server.url}/console/workers")
    assert page.locator(f'[data-worker="{target.worker_id}"] .badge.draining').count() == 1

    page.goto(f"{server.url}/console/actions")
    page.locator(f'[data-worker="{target.worker_id}"] form[action="/console/actions/drain"] button').click()
    assert not next(w for w in live.workers() if w.id == target.worker_id).draining
    server.infer(MODEL)  # served again once resumed


def test_without_an_admin_key_only_localhost_is_served(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off")
    with TestClient(create_app(settings)) as local:  # TestClient's client counts as loopback
        page = local.get("/console/actions")
        assert page.status_code == 200 and "infaas_console=" in page.headers["set-cookie"]
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        form = {"worker": "local", "drain": "no", "confirmed": "yes"}
        assert local.post("/console/actions/drain", data={**form, "csrf": "forged"}).status_code == 403
        resumed = local.post("/console/actions/drain", data={**form, "csrf": token.group(1)})
        assert resumed.status_code == 200, resumed.text
    with TestClient(create_app(settings), client=("203.0.113.7", 40000)) as remote:
        assert remote.get("/console").status_code == 403
