"""``infaas cascades TASK``: a task's cascades and every decision the construction took, from the command line."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infaas.cli.client import call

out = Console()


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def cascades_command(
    task: str = typer.Argument(..., help="the task whose cascades to show"),
    all_decisions: bool = typer.Option(False, "--all", help="also list every pair considered and why it was not kept"),
    numbers: bool = typer.Option(False, "--numbers", help="print each decision's numbers (JSON)"),
) -> None:
    """Show a task's cascades (members, threshold, share the cheap stage answers, saving, accuracy with its
    bootstrap interval, live escalation) and, with --all, every decision about a pair."""
    body = call("GET", f"/v1/tasks/{task}/cascades")
    cascades = body["cascades"]
    if not cascades:
        out.print(f"task {escape(task)} has no cascade (infaas cascades {escape(task)} --all says why)")
    else:
        table = Table("cascade", "status", "cheap -> expensive", "rule", "f", "saving", "accuracy", "interval", "live")
        for c in cascades:
            low, high = c["accuracy_difference_interval"] or (None, None)
            interval = "" if low is None else f"[{low * 100:+.1f}, {high * 100:+.1f}] pt"
            live = c.get("live") or {}
            share = f"{live['escalation_share']:.0%} esc" if live.get("escalation_share") is not None else ""
            table.add_row(
                escape(c["variant"]),
                c["status"],
                escape(f"{c['cheap']} -> {c['expensive']}"),
                f"{c['rule']} >= {c['threshold']:.3g}" if c["rule"] else "",
                _pct(c["answered"]),
                _pct(c["saving"]),
                "" if c["accuracy"] is None else f"{c['accuracy']:.4f}",
                interval,
                share,
            )
        out.print(table)
    if all_decisions or numbers:
        table = Table("kept", "cheap", "expensive", "reason")
        for d in body["decisions"]:
            table.add_row("yes" if d["kept"] else "no", escape(d["cheap"]), escape(d["expensive"]), escape(d["reason"]))
            if numbers:
                table.add_row("", "", "", escape(json.dumps(d["numbers"], sort_keys=True)))
        out.print(table)
