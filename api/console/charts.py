"""The latency–accuracy scatter of a model's variants, rendered server-side by matplotlib.

Server-side SVG keeps the console free of a JavaScript build step. The points are computed once
(``scatter_points``) and used both for the picture and for the table beside it, so the page can say
exactly what was plotted (and the browser test can count it).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before any figure exists: the API process has no display

from matplotlib.backends.backend_svg import FigureCanvasSVG  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from infaas.accuracy import accuracy_of
from infaas.catalog import ModelInfo, VariantInfo  # noqa: E402


@dataclass(frozen=True)
class ScatterPoint:
    """One profiled (variant, batch size) of a model."""

    variant: str
    kind: str
    batch: int
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    accuracy: float  # ``infaas.accuracy.accuracy_of``; 0 stands in for an unknown one (source says so)
    accuracy_metric: str | None
    accuracy_source: str  # measured, declared, estimated or unknown
    cost_per_1m: float  # dollars per million inferences (rows) at this batch size
    pareto: bool = False


def _cost_per_1m(variant: VariantInfo, throughput_per_s: float, prices: Mapping[str, float], cores: int) -> float:
    """Dollars per million rows, priced like ``infaas.selector.query_cost`` (cores held × time per row)."""
    if throughput_per_s <= 0:
        return 0.0
    if variant.hardware == "cpu":
        per_hour = prices.get("cpu-core", 0.0) * (variant.threads or cores)
    else:
        per_hour = prices.get(variant.hardware, prices.get(f"{variant.hardware}-core", 0.0))
    return per_hour / 3600.0 / throughput_per_s * 1e6


def _mark_pareto(points: list[ScatterPoint]) -> list[ScatterPoint]:
    """Flag points no other point beats on both latency (lower) and accuracy (higher)."""
    marked = []
    for p in points:
        dominated = any(
            q.latency_p50_ms <= p.latency_p50_ms
            and q.accuracy >= p.accuracy
            and (q.latency_p50_ms < p.latency_p50_ms or q.accuracy > p.accuracy)
            for q in points
        )
        marked.append(ScatterPoint(**{**p.__dict__, "pareto": not dominated}))
    return marked


def scatter_points(model: ModelInfo, prices: Mapping[str, float], cores: int) -> list[ScatterPoint]:
    """One point per profile of every variant, Pareto front marked."""
    points = []
    for variant in model.variants:
        accuracy = accuracy_of(model, variant)
        for profile in variant.profiles:
            points.append(
                ScatterPoint(
                    variant=variant.name,
                    kind=variant.kind,
                    batch=profile.batch_size,
                    latency_p50_ms=profile.latency_p50_ms,
                    latency_p99_ms=profile.latency_p99_ms,
                    throughput_per_s=profile.throughput_per_s,
                    accuracy=float(accuracy.value or 0.0),
                    accuracy_metric=accuracy.metric,
                    accuracy_source=accuracy.source,
                    cost_per_1m=_cost_per_1m(variant, profile.throughput_per_s, prices, cores),
                )
            )
    return _mark_pareto(points)


def scatter_svg(title: str, points: list[ScatterPoint]) -> bytes:
    """The scatter as SVG: latency on x, accuracy on y, cost as colour, batch size as marker size."""
    figure = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    FigureCanvasSVG(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("latency p50 (ms)")
    axes.set_ylabel("accuracy")
    axes.grid(True, alpha=0.3)
    if not points:
        axes.text(0.5, 0.5, "no profiles yet", ha="center", va="center", transform=axes.transAxes, color="#666")
        axes.set_xticks([])
        axes.set_yticks([])
    else:
        latencies = [p.latency_p50_ms for p in points]
        collection = axes.scatter(
            latencies,
            [p.accuracy for p in points],
            c=[p.cost_per_1m for p in points],
            s=[30 + 12 * min(p.batch, 32) for p in points],
            cmap="viridis",
            alpha=0.85,
            edgecolors=["#d62728" if p.pareto else "white" for p in points],
            linewidths=[1.8 if p.pareto else 0.6 for p in points],
        )
        colorbar = figure.colorbar(collection, ax=axes)
        colorbar.set_label("$ per million inferences")
        front = sorted((p for p in points if p.pareto), key=lambda p: p.latency_p50_ms)
        if front:
            axes.step(
                [p.latency_p50_ms for p in front],
                [p.accuracy for p in front],
                where="post",
                color="#d62728",
                linewidth=1.2,
                label="Pareto front",
            )
            axes.legend(loc="best", fontsize=8)
        for p in front:  # label only the front: labelling every point makes an unreadable pile
            axes.annotate(
                f"{p.variant} b{p.batch}",
                (p.latency_p50_ms, p.accuracy),
                fontsize=7,
                color="#8c1c13",
                xytext=(5, 5),
                textcoords="offset points",
            )
        axes.margins(x=0.08, y=0.12)
        if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
            axes.set_xscale("log")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg")
    return buffer.getvalue()
