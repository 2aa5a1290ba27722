"""``infaas topk``: the k best rows of an input file by one output column (``POST /v1/topk``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from infaas.cli.client import call
from infaas.cli.inputs import read_inputs
from infaas.topk import DEFAULT_MIN_PRECISION

out = Console()


def topk_command(
    model: str = typer.Argument(None, help="model name (or use --task for a model-less query)"),
    task: str = typer.Option(None, help="task: infaas picks the variants"),
    input_file: Path = typer.Option(..., "--input", exists=True, dir_okay=False, help=".npy or .npz inputs (N rows)"),
    input_name: str = typer.Option(None, help="input name for a .npy file (default: the model's only input)"),
    k: int = typer.Option(..., "--k", "-k", help="how many rows to return"),
    column: int = typer.Option(None, help="output column to rank by (a class); optional for a one-column score"),
    min_precision: float = typer.Option(
        DEFAULT_MIN_PRECISION, help="share of the most accurate variant's own top k the answer must hold"
    ),
    latency_ms: float = typer.Option(None, help="latency budget of the whole query in ms"),
) -> None:
    """Rank the rows of a file: print the k best (index and score), r, the estimated precision and the variants."""
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
    body: dict = {"inputs": inputs, "k": k, "min_precision": min_precision}
    body.update({key: v for key, v in (("model", model), ("task", task)) if v is not None})
    if column is not None:
        body["column"] = column
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
    answer = call("POST", "/v1/topk", json=body)
    out.print(
        f"top {answer['k']} of {answer['rows']} rows by {answer['output']}[:, {answer['column']}] "
        f"({answer['mode']}, {answer['rescored']} rows re-scored, r {answer['r']}, "
        f"estimated precision {answer['estimated_precision']:.3f}) in {answer['latency_ms']:.1f} ms"
    )
    for rank, (index, score) in enumerate(zip(answer["indices"], answer["scores"], strict=True), start=1):
        out.print(f"{rank:>4}. row {index:<8} {score:.6g}")
    for role in ("cheap", "expensive"):
        stage = answer[role]
        if stage is not None:
            out.print(
                f"{role}: {stage['model']}/{stage['variant']} on {stage['rows']} rows in {stage['ms']:.1f} ms "
                f"({stage['queries']} queries)"
            )
    out.print(f"reason: {answer['reason']}")
