"""``infaas pipeline register|show|plan|delete`` and ``infaas pipelines``: pipelines from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from infaas.cli.client import call, err

pipeline_app = typer.Typer(help="Pipelines: DAGs of models planned to an end-to-end P99 objective.")
out = Console()


def _load(path: Path) -> Any:
    """A definition from a YAML (or JSON: YAML reads it too) file; exit with the parser's message otherwise."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]cannot read {path}:[/red] {exc}")
        raise typer.Exit(1) from exc


def print_plan(pipeline: dict[str, Any]) -> None:
    """The stored plan as a table (or why there is none)."""
    plan = pipeline.get("plan")
    if not plan:
        out.print(f"{pipeline['name']}: not planned yet (infaas pipeline plan {pipeline['name']})")
        return
    verdict = "meets" if plan["feasible"] else "[red]cannot meet[/red]"
    out.print(
        f"{pipeline['name']}: simulated P99 {plan['p99_ms']:.2f} ms {verdict} the {plan['objective_ms']:g} ms "
        "objective, "
        f"${plan['cost_per_hour']:.4f}/h ({plan['simulations']} simulations, {plan['planning_s']:.2f} s)"
    )
    table = Table("stage", "variant", "batch", "replicas", "utilisation", "$/h", "reached")
    reached = plan.get("scale_factors", {})
    for name, stage in plan["stages"].items():
        table.add_row(
            name,
            f"{stage['model']}/{stage['variant']}",
            str(stage["batch"]),
            str(stage["replicas"]),
            f"{stage['utilisation']:.0%}",
            f"{stage['cost_per_hour']:.4f}",
            f"{reached.get(name, 1.0):.0%}",
        )
    out.print(table)


@pipeline_app.command("register")
def register(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="the definition (YAML or JSON)"),
) -> None:
    """Validate and store a pipeline; prints its stages' scale factors."""
    created = call("POST", "/v1/pipelines", json=_load(path))
    factors = created["scale_factors"]
    shares = ", ".join(f"{k} {v:.0%}" for k, v in factors["stages"].items())
    out.print(f"registered {created['name']}: stages reached by {shares} of queries ({factors['source']})")


@pipeline_app.command("show")
def show(name: str, spec: bool = typer.Option(False, "--spec", help="also print the definition")) -> None:
    """A pipeline's plan (and definition)."""
    pipeline = call("GET", f"/v1/pipelines/{name}")
    if spec:
        out.print_json(json.dumps(pipeline["spec"]))
    print_plan(pipeline)
    print_decisions(pipeline.get("decisions") or [])


def print_decisions(decisions: list[dict[str, Any]]) -> None:
    """The newest autoscaler decisions on the pipeline's stages (plan applied, tuner), if any."""
    if not decisions:
        return
    table = Table("at", "action", "stage", "reason", "outcome", title="recent decisions")
    for d in decisions:
        table.add_row(d["at"][:19], d["action"], d["target"], d["reason"], d["outcome"] or "")
    out.print(table)


@pipeline_app.command("plan")
def plan(name: str) -> None:
    """Plan the pipeline with the current profiles and store the plan."""
    print_plan(call("POST", f"/v1/pipelines/{name}/plan", timeout=600.0))


@pipeline_app.command("delete")
def delete(name: str) -> None:
    """Delete a pipeline (its models stay)."""
    call("DELETE", f"/v1/pipelines/{name}")
    out.print(f"deleted {name}")


def pipelines_command() -> None:
    """List your pipelines with their objective and plan."""
    rows = call("GET", "/v1/pipelines")
    if not rows:
        out.print("no pipelines (infaas pipeline register FILE.yaml)")
        return
    table = Table("name", "stages", "p99 objective", "planned P99", "$/h")
    for p in rows:
        plan = p["plan"] or {}
        table.add_row(
            p["name"],
            " -> ".join(s["name"] for s in p["spec"]["stages"]),
            f"{p['spec']['p99_ms']:g} ms",
            f"{plan['p99_ms']:.2f} ms" if plan else "-",
            f"{plan['cost_per_hour']:.4f}" if plan else "-",
        )
    out.print(table)
