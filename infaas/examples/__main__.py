"""``python -m infaas.examples --out DIR [--quick]``: build the example zoo and print what it measured."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from infaas.examples.zoo import ZOO_FILE, build_and_profile


def main(argv: list[str] | None = None) -> int:
    """Build the zoo into ``--out``, then print name, accuracy and batch-1 latency of every model."""
    parser = argparse.ArgumentParser(prog="python -m infaas.examples", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the models and zoo.json into")
    parser.add_argument("--quick", action="store_true", help="train briefly (for tests); same architectures")
    parser.add_argument("--seed", type=int, default=0, help="data split and training seed")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per latency measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    started = time.perf_counter()
    entries = build_and_profile(args.out, seed=args.seed, quick=args.quick, runs=args.runs)
    print(f"{'model':<18} {'accuracy':>8} {'latency b1 ms':>14}  file")
    for entry in entries:
        print(f"{entry['name']:<18} {entry['accuracy']:>8.4f} {entry['latency_b1_ms']:>14.4f}  {entry['onnx_path']}")
    print(f"wrote {args.out / ZOO_FILE} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
