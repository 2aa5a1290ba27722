"""What decoding the peers benchmark's ResNet-18 request costs, with and without the fast JSON-float conversion.

The body is the one ``peers.py`` sends for ResNet-18 (one 3x128x128 image from scikit-learn's digits as OIP
JSON, 296 KB, 49,152 numbers). Timed, in this process, single-threaded, median of ``--repeats`` rounds of
``--number`` calls each:

* ``orjson.loads`` of the body (the parse every path pays);
* conforming the parsed ``data`` list to FP32 by the general rule (``np.asarray``) and by the fast one
  (``TensorSpec.conform(..., from_json=True)``: ``array('d')``);
* the whole ``infaas.oip.decode_request``, which now takes the fast one.

    python benchmarks/peers_decode.py [--number 50] [--repeats 7]

Writes ``benchmarks/results/peers_decode.json``. Run it under the bench lock: the numbers are timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from peers import MIN_FIDELITY, oip_body  # noqa: E402
from peers_models import CNN_SIZE, digit_images  # noqa: E402

from infaas.examples.zoo import load_digits_split  # noqa: E402
from infaas.oip import decode_request  # noqa: E402
from infaas.tensors import TensorSpec  # noqa: E402

RESULTS = HERE / "results" / "peers_decode.json"


def timed_ms(call: Callable[[], object], number: int, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean time of one call (ms)."""
    call()
    rounds = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(number):
            call()
        rounds.append((time.perf_counter() - began) / number * 1000.0)
    return round(statistics.median(rounds), 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    image = digit_images(load_digits_split(0)[2][:1])
    body = oip_body({"input": image}, {"input": "FP32"}, MIN_FIDELITY)
    data = orjson.loads(body)["inputs"][0]["data"]
    spec = TensorSpec("input", np.dtype("float32"), (len(data),))
    fast, general = spec.conform(data, from_json=True), spec.conform(data)
    if fast.tobytes() != general.tobytes():
        raise SystemExit("the fast and the general conversion disagree")

    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    load_start = os.getloadavg()
    n, r = args.number, args.repeats
    timings = {
        "orjson_loads_ms": timed_ms(lambda: orjson.loads(body), n, r),
        "conform_general_ms": timed_ms(lambda: spec.conform(data), n, r),
        "conform_fast_ms": timed_ms(lambda: spec.conform(data, from_json=True), n, r),
        "decode_request_ms": timed_ms(lambda: decode_request(body, None), n, r),
    }
    results = {
        "benchmark": "peers_decode",
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "body_bytes": len(body),
        "values": len(data),
        "shape": [1, 3, CNN_SIZE, CNN_SIZE],
        "number": n,
        "repeats": r,
        "timings": timings,
        "decode_before_ms": round(timings["orjson_loads_ms"] + timings["conform_general_ms"], 4),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
