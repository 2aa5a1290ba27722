"""``infaas query``: one model-less query from the command line."""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from infaas.cli.client import call
from infaas.cli.inputs import read_inputs
from infaas.selector import ON_INFEASIBLE

out = Console()
OnInfeasibleChoice = enum.Enum("OnInfeasibleChoice", {v: v for v in ON_INFEASIBLE}, type=str)  # type: ignore[misc]


def query_command(
    model: str = typer.Argument(None, help="model name (or use --task for a model-less query)"),
    task: str = typer.Option(None, help="task: infaas picks the model"),
    input_file: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help=".npy or .npz inputs"),
    input_name: str = typer.Option(None, help="input name for a .npy file (default: the model's only input)"),
    latency_ms: float = typer.Option(None, help="latency budget in ms"),
    min_accuracy: float = typer.Option(
        0.0, help="minimum accuracy on the task's metric (measured on held-out labelled rows, or estimated)"
    ),
    min_fidelity: float = typer.Option(
        0.0, help="minimum agreement (classifiers) or cosine (vectors) with the registered model's own outputs"
    ),
    max_cost: float = typer.Option(None, help="maximum cost per query in $ (a hard limit)"),
    on_infeasible: OnInfeasibleChoice = typer.Option(
        OnInfeasibleChoice.best_effort,
        help="when no placement meets --latency-ms: serve the fastest flagged 'SLO at risk', or reject (run nothing)",
    ),
) -> None:
    """Send one query that states what it needs; print the outputs' summary and who served it."""
    if (model is None) == (task is None):
        out.print("[red]give a model name or --task, not both[/red]")
        raise typer.Exit(2)
    inputs = read_inputs(input_file, input_name)
    if "__single__" in inputs:
        target = call("GET", f"/v1/models/{model}") if model else None
        if target is None or len(target["inputs"]) != 1:
            out.print("[red]a .npy file needs --input-name (or a named single-input model)[/red]")
            raise typer.Exit(2)
        inputs = {target["inputs"][0]["name"]: inputs.pop("__single__")}
    body: dict = {"inputs": inputs, "min_accuracy": min_accuracy, "min_fidelity": min_fidelity}
    body.update({k: v for k, v in (("model", model), ("task", task)) if v is not None})
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
    if max_cost is not None:
        body["max_cost"] = max_cost
    body["on_infeasible"] = on_infeasible.value
    answer = call("POST", "/v1/infer", json=body)
    for name, value in answer["outputs"].items():
        array = np.asarray(value)
        summary = f"argmax {array.argmax(axis=-1).tolist()[:16]}" if array.ndim == 2 else f"{array.ravel()[:8]}"
        out.print(f"{name}: shape {list(array.shape)} {summary}")
    s = answer["served_by"]
    risk = " [yellow](SLO at risk)[/yellow]" if s["slo_at_risk"] else ""
    out.print(
        f"served by {s['model']}/{s['variant']} on {s['worker']} (batch {s['batch']}): "
        f"estimated {s['estimated_ms']:.2f} ms, actual {s['actual_ms']:.2f} ms, queue {s['queue_ms']:.2f} ms, "
        f"cost ${s['cost']:.2e}{risk}"
    )
    out.print(f"reason: {s['reason']}")
