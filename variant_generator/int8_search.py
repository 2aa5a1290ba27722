"""Static INT8 by measurement: try quantization configurations, keep those on the speed-fidelity front.

One static INT8 recipe does not fit every model. MinMax QDQ of every operator made CNNs 2.2-2.9x faster, but on
all-MiniLM-L6-v2 it gave cosine 0.39-0.52 to the original (quantized residual ``Add``, ``Softmax`` and layer norm
inputs) and ran slower than FP32. So each build tries the configurations ``configurations`` lists -- the graph
quantized (the original, or the transformer-optimized one for transformer encoders), which operators are
quantized, and the calibration method (MinMax, Entropy, Percentile) -- with per-channel weights (per-tensor only
where per-channel crashes), and measures each one's fidelity and speed. Every configuration is written so that ONNX
Runtime fuses it into integer kernels (``ACTIVATION_TYPE``, ``FLOAT_OUTPUT_OPS``; ``integer_kernels`` counts them in
the optimized graph and each outcome records the count): a QDQ graph that does not fuse runs float ops between
quantize-dequantize pairs, slower than FP32.

Rows: ``BuildContext.validation`` holds only the calibration rows (``ValidationSet.split``); they are split again
here into *fit* rows (the calibration scales come from them) and *select* rows (each configuration's fidelity is
measured on them). The rows every variant is finally scored on are never seen here, so choosing a configuration
is not grading it on the rows it is then reported on (issue 12's rule).

A configuration is kept when no other one is at least as faithful and at least as fast at batch 1 and at the
batcher's batch (the Pareto front over fidelity, ms at batch 1 and ms per batch at ``SPEED_BATCH``); the most
faithful kept one becomes ``cpu-int8-static``, the fastest kept one ``cpu-int8-static-fast``. Every configuration
tried, kept or not, is recorded with its numbers in the variants' notes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from infaas.runtime import CPU_PROVIDERS, Session, Skip, open_session
from variant_generator.accuracy import ValidationSet, fidelity_score, fixed_batch, predict
from variant_generator.base import BuildContext
from variant_generator.int8_dynamic import quantizable_source, require_quantized
from variant_generator.integer_kernels import integer_kernels
from variant_generator.transformer_fp32 import optimized_transformer

log = logging.getLogger(__name__)

METHODS = ("MinMax", "Entropy", "Percentile")
COMPUTE_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
# In the ``weights`` configurations these keep a float output: ONNX Runtime's CPU provider fuses
# DequantizeLinear(activation) + DequantizeLinear(weight) -> MatMul into ``MatMulIntegerToFloat`` (Gemm into
# ``QGemm``), an integer (u8s8, VNNI where the CPU has it) kernel, only when no QuantizeLinear follows. With the
# output quantized *and* its float copy fed to the residual stream (``_float_for_the_rest``) the MatMul had two
# consumers, nothing fused, and MiniLM ran 18 float MatMuls amid 36 DequantizeLinear and 24 QuantizeLinear: 0.5x
# FP32's speed. Unquantized outputs fused all 12 (or 18) MatMuls at the same cosine (0.99747 both).
FLOAT_OUTPUT_OPS = ["MatMul", "Gemm"]
# Unsigned activations (u8 x s8 weights, MLAS's native pair on x86): with the quantizer's default signed ones, ONNX
# Runtime 1.32 fused 9 of ResNet-18's 20 Convs into ``QLinearConv`` and ran the other 11 in float between 18
# layout Transposes, residual Adds float; with unsigned ones all 20 Convs became ``QLinearConv`` and all 8 Adds
# ``QLinearAdd`` (argmax agreement 1.0 both). MiniLM's ``weights`` graphs fused the same either way.
ACTIVATION_TYPE = QuantType.QUInt8
# Ops whose output has the outliers that per-tensor activation scales lose the most on: a GELU's output feeds
# the feed-forward down-projection (on MiniLM, quantizing it cost more fidelity than any other MatMul input).
_GELU_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu", "Erf"})
_GELU_PATH = frozenset({"Mul", "Add", "Div", "Cast", "Reshape"})
SPEED_BATCH = 8  # the batch the speed is compared at (or the model's max_batch / pinned batch when smaller)
CALIBRATION_BATCH = 16
_MIN_RUNS, _MAX_RUNS, _TIME_BUDGET_S = 3, 20, 0.2
SEARCH_DIR = "int8-static-search"
# The search stops starting configurations after this long, so a static INT8 build stays inside the build limit
# (``INFAAS_BUILD_TIMEOUT_S``, 600 s): MiniLM's 13 configurations took 560 s on a 2-core host at load average 15.
SEARCH_BUDGET_S = 240.0
# Below this fidelity a configuration is not kept, fast or not: MinMax of every operator gave MiniLM cosine 0.41,
# which served as "INT8 MiniLM" to a query without a fidelity floor would be another model's answers.
MIN_FIDELITY = 0.9
# Speeds within this factor count as equal when deciding what is on the front (timing noise on a shared host).
SPEED_NOISE = 1.1
_REASON_CHARS = 120  # of a failed configuration's reason, in the notes


class ValidationReader(CalibrationDataReader):
    """Feeds calibration rows in batches of one size, the last one wrapping around to the first rows: the
    histogram calibrators (Entropy, Percentile) stack every batch's activations and failed on a shorter last
    batch ("inhomogeneous shape")."""

    def __init__(self, data: ValidationSet, batch: int) -> None:
        self._batches = iter([data.batch(batch, start) for start in range(0, data.rows, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class Config:
    """One way to quantize: ``base`` graph, ``ops`` quantized, calibration ``method``."""

    base: str  # "original" (ONNX pre-processed) or "transformer" (onnxruntime.transformers-optimized)
    ops: str  # "all" (ONNX Runtime's defaults), "weights" (compute ops with a constant weight), "weights-no-gelu"
    method: str  # a CalibrationMethod name

    @property
    def name(self) -> str:
        """E.g. ``transformer/weights/Percentile``."""
        return f"{self.base}/{self.ops}/{self.method}"


@dataclass(frozen=True)
class Outcome:
    """What one configuration gave: ``front``, ``dominated``, ``unfaithful``, ``failed`` (with why), ``not-int8``,
    or ``not-tried`` (the search's time ran out)."""

    config: str
    status: str
    fidelity: float | None = None
    metric: str | None = None
    ms_batch1: float | None = None
    ms_batch: float | None = None  # at ``batch``
    batch: int = 1
    per_channel: bool = True
    artifact: str | None = None
    reason: str | None = None
    integer_ops: int | None = None  # integer kernels in the graph ONNX Runtime optimizes it into

    def describe(self) -> str:
        """E.g. ``transformer/weights/MinMax: cosine 0.9996, 9.2 / 59.6 ms at batch 1 / 8``."""
        if self.fidelity is None or self.ms_batch1 is None or self.ms_batch is None:
            return f"{self.config}: {self.status} ({(self.reason or '')[:_REASON_CHARS]})"
        channel = "" if self.per_channel else ", per-tensor"
        kernels = "" if self.integer_ops is None else f", {self.integer_ops} integer kernels"
        return (
            f"{self.config}{channel}: {self.metric} {self.fidelity:.4f}, {self.ms_batch1:.2f} / {self.ms_batch:.2f} ms "
            f"at batch 1 / {self.batch}{kernels} ({'kept' if self.status == 'front' else self.status})"
        )


@dataclass(frozen=True)
class Search:
    """Every configuration's outcome, the front first (most faithful first), and the FP32 graph's speed."""

    outcomes: tuple[Outcome, ...]
    fp32_ms_batch1: float
    fp32_ms_batch: float
    batch: int
    select_rows: int

    @property
    def front(self) -> list[Outcome]:
        """Kept configurations, most faithful first (then fastest)."""
        return [o for o in self.outcomes if o.status == "front"]

    def summary(self) -> str:
        """Every outcome in one line each, the FP32 reference first."""
        lines = [
            f"tried {len(self.outcomes)} configurations on {self.select_rows} held-out calibration row(s); "
            f"FP32 {self.fp32_ms_batch1:.2f} / {self.fp32_ms_batch:.2f} ms at batch 1 / {self.batch}"
        ]
        return "; ".join(lines + [o.describe() for o in self.outcomes])


def _weight_inputs(model: onnx.ModelProto) -> set[str]:
    constants = {t.name for t in model.graph.initializer}
    return constants | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def _gelu_fed(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    producers = {out: n for n in model.graph.node for out in n.output}
    frontier = [node.input[0]]
    for _ in range(4):
        nodes = [producers[n] for n in frontier if n in producers]
        if any(n.op_type in _GELU_OPS for n in nodes):
            return True
        frontier = [i for n in nodes if n.op_type in _GELU_PATH for i in n.input]
    return False


def _node_choice(path: Path, ops: str) -> tuple[Path, list[str] | None, list[str] | None]:
    """``(graph, op_types_to_quantize, nodes_to_exclude)`` for an ops choice on the graph at ``path``.

    ``weights``: only compute operators with a constant weight, so ``Softmax``, layer norms, GELU and residual
    ``Add`` stay float, and so do activation x activation MatMuls (attention scores and mixing). The quantizer
    excludes nodes by name, so a graph with unnamed compute nodes is quantized from a copy that names them.
    """
    if ops == "all":
        return path, None, None
    model = onnx.load(str(path))
    unnamed = [n for n in model.graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = f"infaas_{node.op_type}_{i}"
    if unnamed:
        path = path.with_name(path.stem + "-named.onnx")
        onnx.save(model, str(path))
    weights = _weight_inputs(model)
    excluded = [
        n.name
        for n in model.graph.node
        if n.op_type in COMPUTE_OPS
        and (not any(i in weights for i in n.input[1:2]) or (ops == "weights-no-gelu" and _gelu_fed(model, n)))
    ]
    return path, COMPUTE_OPS, excluded


def _has_gelu_fed(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in COMPUTE_OPS and _gelu_fed(model, n) for n in model.graph.node)


def _shaped_transformer(ctx: BuildContext) -> Path:
    """The transformer-optimized graph with every tensor's type and shape inferred (ONNX Runtime's symbolic
    inference knows its contrib ops): without them the quantizer quantized MiniLM's weights only, since it
    cannot type the activations that contrib operators produce."""
    out = ctx.workdir / "transformer-shaped.onnx"
    if out.exists():
        return out
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    optimized, _ = optimized_transformer(ctx)
    inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(optimized)), auto_merge=True)
    onnx.save(inferred, str(out))
    return out


def configurations(ctx: BuildContext) -> list[tuple[Config, Path | str]]:
    """Each configuration with the graph it quantizes (or why that graph could not be made)."""
    original = quantizable_source(ctx)
    bases: list[tuple[str, Path | str]] = [("original", original)]
    try:
        bases.append(("transformer", _shaped_transformer(ctx)))
    except Skip:
        pass  # not a transformer encoder: nothing to try on that base
    except Exception as exc:  # the optimizer or shape inference failed: recorded, the rest still tried
        bases.append(("transformer", f"{type(exc).__name__}: {exc}"))
    found: list[tuple[Config, Path | str]] = []
    # Most promising first, so a search that runs out of ``SEARCH_BUDGET_S`` drops the least promising: on MiniLM
    # the transformer graph with GELU outputs left float was the most faithful (cosine 0.998 vs 0.41 for "all").
    for base, graph in reversed(bases):
        op_sets = [] if base == "transformer" else ["all"]
        op_sets.append("weights")
        if isinstance(graph, Path) and _has_gelu_fed(graph):
            op_sets.append("weights-no-gelu")
        for ops in reversed(op_sets):
            # Entropy and Percentile keep a histogram of every activation: "all" of a transformer is tried as the
            # CNN recipe it was (MinMax); the transformer recipes are where the method matters.
            methods = ("MinMax",) if ops == "all" and len(bases) > 1 else METHODS
            found.extend((Config(base, ops, method), graph) for method in methods)
    return found


def _time_ms(session: Session, feeds: dict[str, np.ndarray]) -> float:
    session.run(None, feeds)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < _MAX_RUNS and (len(times) < _MIN_RUNS or time.perf_counter() - started < _TIME_BUDGET_S):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    # The fastest run, not the median: on a shared host other processes only ever add time, and a build on a
    # 2-core host at load average 15 saw medians 10x the quiet figure (MiniLM FP32: 116 ms at batch 1).
    return float(np.min(times))


class _Bench:
    """The select rows, the original's outputs on them, and how a graph is timed (as a worker would run it)."""

    def __init__(self, ctx: BuildContext, select: ValidationSet) -> None:
        self.ctx, self.select = ctx, select
        self.pinned = fixed_batch(ctx.model)
        self.batch = self.pinned or max(1, min(SPEED_BATCH, ctx.model.max_batch))
        self.threads = max(1, ctx.cores)
        original = self._open(ctx.source)
        self.reference = self._predict(original)
        self.fp32 = self._speed(original)

    def _open(self, path: Path) -> Session:
        return open_session(path, CPU_PROVIDERS, self.threads, shapes=self.ctx.model.input_shapes)

    def _predict(self, session: Session) -> np.ndarray:
        batch = self.pinned or min(64, max(1, self.ctx.model.max_batch))
        return predict(session, self.select, batch, pinned=self.pinned is not None)

    def _speed(self, session: Session) -> tuple[float, float]:
        at_one = self.pinned or 1
        return _time_ms(session, self.select.batch(at_one)), _time_ms(session, self.select.batch(self.batch))

    def measure(self, path: Path) -> tuple[float, str, float, float]:
        """Fidelity to the original on the select rows, its metric, and ms at batch 1 and at ``batch``."""
        session = self._open(path)
        fidelity, metric = fidelity_score(self._predict(session), self.reference, task=self.ctx.model.task)
        return (fidelity, metric, *self._speed(session))


def _split(calibration: ValidationSet, seed: int = 1) -> tuple[ValidationSet, ValidationSet]:
    """``(fit, select)``: a quarter of the calibration rows (at least one) picks the configuration, the rest fit
    the scales; with a single row both are that row (nothing else to measure on)."""
    rows = calibration.rows
    if rows < 2:
        return calibration, calibration
    order = np.random.default_rng(seed).permutation(rows)
    count = max(1, rows // 4)
    return calibration.take(np.sort(order[count:])), calibration.take(np.sort(order[:count]))


def _float_for_the_rest(path: Path) -> None:
    """Feed every operator that is not quantized its float input again, not the quantize-dequantize copy.

    ONNX Runtime's QDQ quantizer gives an activation's dequantized copy to *every* consumer: on the tiny BERT the
    residual input of each ``SkipLayerNormalization`` and the input of each ``BiasGelu`` were fed the INT8-rounded
    hidden state, though only the MatMuls were asked to be quantized. Rewiring them to the float tensor keeps the
    residual stream, layer norms and GELU in float, as the ``weights`` configurations mean to.
    """
    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    changed = False
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[i] = quantize.input[0]
                changed = True
    if changed:
        onnx.save(model, str(path))


def _quantize(graph: Path, out: Path, config: Config, fit: ValidationSet, ctx: BuildContext) -> bool:
    """Quantize with per-channel weights, per-tensor if that crashes; whether per-channel it is."""
    graph, op_types, excluded = _node_choice(graph, config.ops)
    batch = fixed_batch(ctx.model) or min(CALIBRATION_BATCH, max(1, ctx.model.max_batch), fit.rows)
    for per_channel in (True, False):
        try:
            quantize_static(
                graph,
                out,
                ValidationReader(fit, batch),
                quant_format=QuantFormat.QDQ,
                activation_type=ACTIVATION_TYPE,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                calibrate_method=getattr(CalibrationMethod, config.method),
                op_types_to_quantize=op_types,
                nodes_to_exclude=excluded,
                extra_options={} if config.ops == "all" else {"OpTypesToExcludeOutputQuantization": FLOAT_OUTPUT_OPS},
            )
            if config.ops != "all":
                _float_for_the_rest(out)
            return per_channel
        except Exception as exc:
            if not per_channel:
                raise
            log.info("per-channel %s failed for %s (%s); retrying per-tensor", config.name, ctx.model.name, exc)
    raise AssertionError("unreachable")


def _try(config: Config, graph: Path | str, fit: ValidationSet, bench: _Bench, folder: Path) -> Outcome:
    if isinstance(graph, str):
        return Outcome(config.name, "failed", reason=f"the {config.base} graph could not be made: {graph}")
    out = folder / (config.name.replace("/", "_") + ".onnx")
    try:
        per_channel = _quantize(graph, out, config, fit, bench.ctx)
        require_quantized(out, bench.ctx.model, "static INT8", "another configuration may")
        kernels = integer_kernels(out)
        fidelity, metric, ms1, ms_batch = bench.measure(out)
    except Skip as exc:
        out.unlink(missing_ok=True)
        return Outcome(config.name, "not-int8", reason=str(exc)[:300])
    except Exception as exc:
        out.unlink(missing_ok=True)
        return Outcome(config.name, "failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
    numbers = (fidelity, metric, ms1, ms_batch, bench.batch, per_channel, str(out))
    return Outcome(config.name, "measured", *numbers, integer_ops=kernels)


def _covers(kept: Outcome, other: Outcome) -> bool:
    """Whether ``kept`` (at least as faithful) is also about as fast as ``other`` at both batch sizes, within
    ``SPEED_NOISE``: then ``other`` buys nothing worth a variant."""
    assert kept.ms_batch1 is not None and kept.ms_batch is not None
    assert other.ms_batch1 is not None and other.ms_batch is not None
    return kept.ms_batch1 <= SPEED_NOISE * other.ms_batch1 and kept.ms_batch <= SPEED_NOISE * other.ms_batch


def pareto(outcomes: list[Outcome]) -> list[Outcome]:
    """Measured outcomes marked ``front``, ``dominated`` or ``unfaithful`` (below ``MIN_FIDELITY``); the front first,
    most faithful (then fastest) first.

    Taken most faithful first, a configuration joins the front unless one already on it is about as fast (within
    ``SPEED_NOISE``) at batch 1 and at the batcher's batch: a speed difference inside timing noise does not make a
    second variant (without the margin, rebuilding the same MLP twice kept a different number of them).
    """
    outcomes = [
        replace(o, status="unfaithful") if o.status == "measured" and (o.fidelity or 0.0) < MIN_FIDELITY else o
        for o in outcomes
    ]
    measured = sorted((o for o in outcomes if o.status == "measured"), key=lambda o: (-(o.fidelity or 0), o.ms_batch))
    front: list[Outcome] = []
    dominated: list[Outcome] = []
    for outcome in measured:
        if any(_covers(kept, outcome) for kept in front):
            dominated.append(replace(outcome, status="dominated"))
        else:
            front.append(replace(outcome, status="front"))
    return front + dominated + [o for o in outcomes if o.status != "measured"]


def explore(ctx: BuildContext, folder: Path) -> Search:
    """Try every configuration within ``SEARCH_BUDGET_S``, artifacts written under ``folder`` and all kept (the
    benchmark measures each one on the scoring rows)."""
    if ctx.validation is None:
        raise Skip("no validation inputs to calibrate on")
    folder.mkdir(parents=True, exist_ok=True)
    fit, select = _split(ctx.validation)
    bench = _Bench(ctx, select)
    tried: list[Outcome] = []
    started = time.monotonic()
    for config, graph in configurations(ctx):
        if time.monotonic() - started > SEARCH_BUDGET_S:
            spent = f"not tried: the search had spent its {SEARCH_BUDGET_S:.0f} s"
            tried.append(Outcome(config.name, "not-tried", reason=spent))
            continue
        tried.append(_try(config, graph, fit, bench, folder))
    return Search(tuple(pareto(tried)), bench.fp32[0], bench.fp32[1], bench.batch, select.rows)


def recorded(ctx: BuildContext) -> Search | None:
    """This build's search, if it already ran (kept under ``ctx.workdir``)."""
    record = ctx.workdir / SEARCH_DIR / "search.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    return Search(**{**data, "outcomes": tuple(Outcome(**o) for o in data["outcomes"])})


def search(ctx: BuildContext) -> Search:
    """Try every configuration once per build (the result is kept under ``ctx.workdir`` for the other static
    generators); the files of configurations not kept are removed."""
    folder = ctx.workdir / SEARCH_DIR
    record = folder / "search.json"
    done = recorded(ctx)
    if done is not None:
        return done
    result = explore(ctx, folder)
    outcomes = result.outcomes
    for outcome in outcomes:
        if outcome.status != "front" and outcome.artifact:
            Path(outcome.artifact).unlink(missing_ok=True)
    log.info("static INT8 search for %s: %s", ctx.model.name, result.summary())
    record.write_text(json.dumps({**asdict(result), "outcomes": [asdict(o) for o in outcomes]}))
    return result


def take(ctx: BuildContext, outcome: Outcome, out: Path) -> Path:
    """Copy a kept configuration's artifact to ``out``."""
    assert outcome.artifact is not None
    shutil.copyfile(outcome.artifact, out)
    return out


def sole_front_reason(result: Search) -> str:
    """Why a second static slot has nothing to take."""
    same = "no static INT8 configuration is 1.5x faster at the batcher's batch than the most faithful one"
    return f"{same}; {result.summary()}"
