"""CLI for offline jobs (``infaas job ...``) and the Celery worker that runs them (``infaas jobs``)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from infaas.cli.client import call, client, err
from infaas.config import get_settings

job_app = typer.Typer(help="Offline (batch) jobs: run a whole .npy/.npz file through a model.", no_args_is_help=True)
out = Console()

TERMINAL_JOB_STATES = {"done", "failed"}


def _print_job(job: dict) -> None:
    target = job["model"] or f"task {job['task']}"
    out.print(
        f"job [bold]{job['id']}[/bold]: {job['status']} {job['progress']:.0%}  {target}  "
        f"variant={job['variant'] or '-'}"
    )
    if job.get("note"):
        out.print(f"  [yellow]note:[/yellow] {job['note']}")
    if job.get("error"):
        out.print(f"  [red]error:[/red] {job['error']}")
    if job.get("result_url"):
        out.print(f"  result: {job['result_key']} (infaas job fetch {job['id']} --out FILE)")


def _wait(job_id: str, timeout_s: float) -> dict:
    """Poll a job with a progress bar until it is done or failed."""
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}")) as progress:
        bar = progress.add_task(job_id[:8], total=1.0, state="queued")
        while True:
            job = call("GET", f"/v1/jobs/{job_id}")
            progress.update(bar, completed=job["progress"], state=job["status"])
            if job["status"] in TERMINAL_JOB_STATES or time.monotonic() > deadline:
                return job
            time.sleep(0.5)


@job_app.command("submit")
def submit(
    name: str = typer.Argument(None, help="model to run (or give --task)"),
    task: str = typer.Option(None, "--task", help="run on the cheapest model of this task you may use"),
    input_file: Path = typer.Option(
        ..., "--input", exists=True, dir_okay=False, help=".npy (single-input models) or .npz named after inputs"
    ),
    min_accuracy: float = typer.Option(0.0, help="accuracy floor in [0, 1]"),
    deadline_s: float = typer.Option(None, help="prefer variants that finish within this many seconds"),
    wait: bool = typer.Option(False, help="wait for the job, showing progress"),
    timeout_s: float = typer.Option(3600.0, help="how long --wait waits"),
) -> None:
    """Queue an offline job over a whole input file and print its id."""
    if bool(name) == bool(task):
        err.print("[red]give a model NAME or --task, not both[/red]")
        raise typer.Exit(2)
    data = {"min_accuracy": str(min_accuracy)}
    data.update({"model": name} if name else {"task": task})
    if deadline_s is not None:
        data["deadline_s"] = str(deadline_s)
    with open(input_file, "rb") as handle:
        accepted = call(
            "POST", "/v1/jobs", data=data, files={"input": (input_file.name, handle, "application/octet-stream")}
        )
    out.print(f"job {accepted['id']} {accepted['status']}")
    if wait:
        job = _wait(accepted["id"], timeout_s)
        _print_job(job)
        if job["status"] == "failed":
            raise typer.Exit(1)


@job_app.command("status")
def status(job_id: str = typer.Argument(..., help="the job id")) -> None:
    """Show a job's status, progress, chosen variant, result and error."""
    _print_job(call("GET", f"/v1/jobs/{job_id}"))


@job_app.command("list")
def list_jobs() -> None:
    """Your jobs, newest first."""
    for job in call("GET", "/v1/jobs"):
        _print_job(job)


@job_app.command("fetch")
def fetch(
    job_id: str = typer.Argument(..., help="the job id"),
    out_file: Path = typer.Option(..., "--out", dir_okay=False, help="where to write the result .npz"),
) -> None:
    """Download a finished job's outputs (one .npz, arrays named after the model's outputs)."""
    with client() as http, http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
        if response.status_code >= 400:
            response.read()
            err.print(f"[red]error {response.status_code}:[/red] {response.json().get('detail')}")
            raise typer.Exit(1)
        with open(out_file, "wb") as handle:
            for chunk in response.iter_bytes(1 << 20):
                handle.write(chunk)
    out.print(f"wrote {out_file}")


def jobs_worker(
    concurrency: int = typer.Option(1, help="jobs run at once in this worker (each uses the variant's threads)"),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, solo or threads"),
    loglevel: str = typer.Option("info", help="log level"),
) -> None:
    """Run a Celery worker for background jobs (offline jobs, variant builds); needs INFAAS_BROKER_URL."""
    if not get_settings().broker_url:
        err.print("[red]INFAAS_BROKER_URL is not set[/red]: the embedded server runs jobs in-process already")
        raise typer.Exit(2)
    from infaas.celery_worker import app as celery_app

    queue = celery_app.conf.task_default_queue
    celery_app.worker_main(
        ["worker", f"--concurrency={concurrency}", f"--pool={pool}", f"--loglevel={loglevel}", f"--queues={queue}"]
    )
