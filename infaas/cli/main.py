"""Top-level CLI commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from infaas.cli.cascades import cascades_command
from infaas.cli.client import call, err
from infaas.cli.decisions import decisions_command
from infaas.cli.jobs import job_app, jobs_worker
from infaas.cli.keys import keys_app
from infaas.cli.pipelines import pipeline_app, pipelines_command
from infaas.cli.query import query_command
from infaas.cli.topk import topk_command
from infaas.cli.worker import worker_command
from infaas.config import get_settings

app = typer.Typer(help="infaas: model-less inference serving.", no_args_is_help=True)
db_app = typer.Typer(help="Metadata database.")
examples_app = typer.Typer(help="The example model zoo.")
app.add_typer(db_app, name="db")
app.add_typer(examples_app, name="examples")
app.add_typer(job_app, name="job")
app.add_typer(keys_app, name="keys")
app.add_typer(pipeline_app, name="pipeline")
app.command("worker")(worker_command)
app.command("decisions")(decisions_command)
app.command("cascades")(cascades_command)
app.command("query")(query_command)
app.command("topk")(topk_command)
app.command("jobs")(jobs_worker)
app.command("pipelines")(pipelines_command)
out = Console()

TERMINAL_VARIANT_STATES = {"ready", "failed", "skipped"}


def forwarded_header_options(trusted_proxies: str) -> dict[str, object]:
    """uvicorn's forwarded-header options: believed only from the proxies an operator names.

    uvicorn's default believes ``X-Forwarded-For`` from 127.0.0.1, so any local client could name its own
    address: 30 wrong console keys sent with 30 forwarded addresses were 30 401s and no 429 (issue 14).
    """
    if not trusted_proxies.strip():
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted_proxies}


@app.command()
def serve(
    host: str = typer.Option(None, help="interface to bind (default INFAAS_HOST, 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default INFAAS_PORT, 8000)"),
    workers: int = typer.Option(
        None, help="processes serving the port, each a whole front-end (default INFAAS_SERVE_WORKERS, 1)"
    ),
) -> None:
    """Run the API server (applies database migrations first).

    The app and its HTTP protocol are named by import string, not imported: the core never imports the
    ``api`` layer above it (``lint-imports``). ``create_app()`` reads the same process-wide
    ``get_settings()`` as here. What a connection may hold is bounded: its headers (time and size,
    ``api/http_protocol.py``), idle keep-alive time, and the number of connections and requests.

    With ``--workers N``, N uvicorn processes each accept on their own ``SO_REUSEPORT`` socket of the port
    (``infaas/cli/serve_group.py``; what they share, and what is refused: ``infaas/process_group.py``). Migrations
    run once, here, before any of them starts.
    """
    import os

    import uvicorn

    from infaas import logs, process_group, switch_interval, tracing

    settings = get_settings()
    workers = settings.serve_workers if workers is None else workers
    try:
        process_group.check_serve_workers(settings, workers)
    except ValueError as exc:
        err.print(f"[red]error (--workers):[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if workers > 1:
        from infaas.db.migrate import upgrade

        settings.ensure_home()
        upgrade(settings.resolved_database_url)
        process_group.catalog_file_path(settings.home).unlink(missing_ok=True)  # a new group's announcements
        os.environ.update(process_group.group_environment(settings, workers, os.environ))
    logs.setup(settings)
    switch_interval.apply(settings.switch_interval_ms)
    tracing.configure("infaas")
    if settings.in_process_worker and settings.worker_gpu is not None:
        _require_usable_gpu(settings.worker_gpu)
    host = host or settings.host
    if not settings.auth_enabled and host not in {"127.0.0.1", "localhost", "::1"}:
        out.print(
            "[yellow]No INFAAS_ADMIN_KEY set: binding to 127.0.0.1 only (set a key to listen elsewhere).[/yellow]"
        )
        host = "127.0.0.1"
    options: dict[str, Any] = dict(
        factory=True,
        host=host,
        port=port or settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's own lines (errors) go through infaas.logs: JSON, secrets masked
        # httptools plus a header deadline and size bound, and no reading past a finished answer.
        http="api.http_protocol:GuardedHttpToolsProtocol",
        loop="uvloop",
        **forwarded_header_options(settings.trusted_proxies),
        access_log=False,  # no per-request log record (they were filtered out at "warning" anyway)
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,  # connections + requests in flight; 503 past it (per process)
    )
    if workers > 1:
        from infaas.cli.serve_group import run_group

        run_group("api.app:create_app", workers=workers, **options)
    else:
        uvicorn.run("api.app:create_app", **options)


def _require_usable_gpu(pinned: int) -> None:
    """Check ``INFAAS_WORKER_GPU`` before uvicorn starts: the app factory would fail with a traceback ending in
    the reason, where one line naming the visible devices says what to fix."""
    from infaas.hardware import GpuNotUsable, detect

    try:
        detect(pinned)
    except GpuNotUsable as exc:
        err.print(f"[red]error (INFAAS_WORKER_GPU):[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the Alembic migrations to INFAAS_DATABASE_URL."""
    from infaas.db.migrate import upgrade

    settings = get_settings()
    settings.ensure_home()
    upgrade(settings.resolved_database_url, revision)
    out.print(f"database at revision {revision}")


@examples_app.command("build")
def examples_build(
    out_dir: Path = typer.Option(..., "--out", help="folder to write the models into"),
    quick: bool = typer.Option(False, help="train briefly (tests)"),
) -> None:
    """Train the example zoo offline and export it to ONNX."""
    from infaas.examples.zoo import build_zoo

    for model in build_zoo(out_dir, quick=quick):
        out.print(f"{model.name}: accuracy {model.accuracy:.3f} → {model.onnx_path}")


@app.command()
def register(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="the .onnx file"),
    name: str = typer.Option(..., help="model name"),
    task: str = typer.Option(..., help="task, e.g. image-classification"),
    accuracy: float = typer.Option(None, help="declared accuracy in [0, 1]"),
    validation: Path = typer.Option(None, exists=True, dir_okay=False, help=".npz validation set"),
    max_batch: int = typer.Option(16, help="largest batch to build and profile"),
    public: bool = typer.Option(False, help="let every tenant use the model"),
    wait: bool = typer.Option(False, help="wait for the variant build, showing progress"),
    input_shape: list[str] = typer.Option(
        None,
        help="NAME=D0,D1,... (repeatable): the shape an input with dynamic dimensions runs at, e.g. "
        "images=1,3,320,320; without it registration tries the model's metadata, then common sizes",
    ),
) -> None:
    """Register a model; its variants are built in the background."""
    data = {"name": name, "task": task, "max_batch": str(max_batch), "public": str(public).lower()}
    if accuracy is not None:
        data["accuracy"] = str(accuracy)
    if input_shape:
        data["input_shape"] = ";".join(input_shape)
    with open(path, "rb") as model_file:
        files = {"model": (path.name, model_file, "application/octet-stream")}
        if validation is not None:
            with open(validation, "rb") as validation_file:
                files["validation"] = (validation.name, validation_file, "application/octet-stream")
                model = call("POST", "/v1/models", data=data, files=files)
        else:
            model = call("POST", "/v1/models", data=data, files=files)
    out.print(f"registered [bold]{model['name']}[/bold] ({model['task']}); variant build {model['status']}")
    if wait:
        _wait_for_build(name)


def _wait_for_build(name: str, timeout_s: float = 1800.0) -> None:
    """Poll the model and show one progress bar per variant until every variant is settled."""
    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}")) as progress:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            model = call("GET", f"/v1/models/{name}")
            for variant in model["variants"] or []:
                if variant["name"] not in bars:
                    bars[variant["name"]] = progress.add_task(variant["name"], total=1, state="")
                done = variant["status"] in TERMINAL_VARIANT_STATES
                progress.update(bars[variant["name"]], completed=1 if done else 0, state=variant["status"])
            if model["status"] in {"ready", "failed"}:
                break
            time.sleep(0.5)
    out.print(f"model {name}: {model['status']} {model.get('status_reason') or ''}")


def accuracy_text(value: float | None, metric: str | None, source: str) -> str:
    """``0.920 top1 (measured)``, or ``unknown``: value, metric and where the accuracy comes from, never bare."""
    return "unknown" if value is None else f"{value:.3f} {metric} ({source})"


def fidelity_text(value: float | None, metric: str | None) -> str:
    """``1.000 agreement``, or empty when it was not measured."""
    return "" if value is None else f"{value:.3f} {metric}"


@app.command()
def models() -> None:
    """List the models you can use."""
    table = Table("name", "task", "status", "ready", "failed", "skipped", "best accuracy", "owner")
    for m in call("GET", "/v1/models"):
        c = m["variant_counts"]
        best = m.get("accuracy") or {"value": None, "metric": None, "source": "unknown"}
        table.add_row(
            m["name"],
            m["task"],
            m["status"],
            str(c["ready"]),
            str(c["failed"]),
            str(c["skipped"]),
            accuracy_text(best["value"], best["metric"], best["source"]),
            m["owner"],
        )
    out.print(table)


@app.command()
def describe(name: str) -> None:
    """Show one model, its signature and variant statuses."""
    m = call("GET", f"/v1/models/{name}")
    out.print(
        f"[bold]{m['name']}[/bold]  task={m['task']}  status={m['status']}  opset={m['opset']}  "
        f"max_batch={m['max_batch']}  owner={m['owner']}  public={m['public']}"
    )
    if m.get("status_reason"):
        out.print(f"  reason: {m['status_reason']}")
    for io in ("inputs", "outputs"):
        for t in m[io]:
            out.print(f"  {io[:-1]} {t['name']}: {t['dtype']}{t['shape']}")
    # The shape registration found each dynamic input runs at (``infaas.input_shapes``): what variants are
    # profiled and warmed up at, and where a query of another size may not run.
    for input_name, shape in (m.get("input_shapes") or {}).items():
        out.print(f"  input {input_name} recorded at shape {list(shape)} (profiled and warmed up at it)")
    for rewrite in m.get("rewrites") or []:
        out.print(f"  rewritten at registration: {escape(rewrite)}")
    for v in m["variants"] or []:
        quality = ""
        if v["status"] == "ready":
            accuracy = accuracy_text(v["accuracy"], v["accuracy_metric"], v["accuracy_source"])
            fidelity = fidelity_text(v["fidelity"], v["fidelity_metric"])
            quality = f"accuracy {accuracy}" + (f", fidelity {fidelity}" if fidelity else "")
        out.print(f"  variant {v['name']:<24} {v['status']:<9} {quality}{v.get('reason') or ''}")


@app.command()
def variants(name: str) -> None:
    """Print each variant's measured profile per batch size."""
    table = Table(
        "variant",
        "kind",
        "precision",
        "hw",
        "status",
        "batch",
        "p50 ms",
        "p99 ms",
        "thr/s",
        "MB",
        "accuracy",
        "fidelity",
    )
    for v in call("GET", f"/v1/models/{name}/variants"):
        accuracy = accuracy_text(v["accuracy"], v["accuracy_metric"], v["accuracy_source"])
        fidelity = fidelity_text(v["fidelity"], v["fidelity_metric"])
        if not v["profiles"]:
            table.add_row(
                v["name"],
                v["kind"],
                v["precision"],
                v["hardware"],
                v["status"],
                "",
                "",
                "",
                "",
                "",
                (v.get("reason") or "")[:40],
                "",
            )
        for p in v["profiles"]:
            table.add_row(
                v["name"],
                v["kind"],
                v["precision"],
                v["hardware"],
                v["status"],
                str(p["batch_size"]),
                f"{p['latency_p50_ms']:.3f}",
                f"{p['latency_p99_ms']:.3f}",
                f"{p['throughput_per_s']:.0f}",
                f"{p['memory_mb']:.1f}",
                accuracy,
                fidelity,
            )
    out.print(table)


@app.command()
def profile(name: str) -> None:
    """Re-profile a model's variants on the serving host."""
    call("POST", f"/v1/models/{name}/profile")
    out.print(f"re-profiling of {name} queued")


@app.command()
def delete(name: str, yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Delete a model with its variants and files."""
    if not yes:
        typer.confirm(f"delete model {name} and all its variants?", abort=True)
    call("DELETE", f"/v1/models/{name}")
    out.print(f"deleted {name}")
