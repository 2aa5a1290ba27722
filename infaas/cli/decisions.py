"""``infaas decisions``: the autoscaler's recent decisions and why they were made."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from infaas.cli.client import call

out = Console()


def decisions_command(
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000, help="newest first, at most this many"),
    level: str = typer.Option(None, help="only 'model' or 'vm' decisions"),
    inputs: bool = typer.Option(False, "--inputs", help="also print the inputs that triggered each decision"),
) -> None:
    """Show the autoscaler's decisions (admin key needed)."""
    params: dict[str, str | int] = {"limit": limit}
    if level:
        params["level"] = level
    rows = call("GET", "/v1/decisions", params=params)
    if not rows:
        out.print("no decisions recorded (is INFAAS_AUTOSCALER off?)")
        return
    table = Table("time", "level", "action", "target", "reason", "outcome")
    for d in rows:
        outcome = "dry-run" if d["dry_run"] else (d["outcome"] or "")
        table.add_row(d["at"][11:19], d["level"], d["action"], d["target"], d["reason"], outcome)
        if inputs:
            table.add_row("", "", "", "", json.dumps(d["inputs"], sort_keys=True), "")
    out.print(table)
