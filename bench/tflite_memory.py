"""Resident memory one LiteRT interpreter adds, per INT8 artifact of a bundle, XNNPACK on and off.

    python -m bench.tflite_memory                      # the shipped bundle
    python -m bench.tflite_memory --bundle DIR --threads 2

Each measurement runs in a fresh process (a freed interpreter's pages would otherwise be
reused by the next one): RSS before opening the artifact, then after ``allocate_tensors`` and
one ``invoke`` of a zero frame (and the median of 5 more invokes, for the price of turning
XNNPACK off). Why it matters: every inference worker holds its own
interpreter, and XNNPACK's share grows with the input's pixels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
import numpy as np, psutil
from ai_edge_litert.interpreter import Interpreter, OpResolverType
path, xnnpack, threads = sys.argv[1], sys.argv[2] == "on", int(sys.argv[3])
rss = lambda: psutil.Process().memory_info().rss
before = rss()
kw = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
it = Interpreter(model_path=path, num_threads=threads, **kw)
it.allocate_tensors()
inp = it.get_input_details()[0]
it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
it.invoke()
added = rss() - before
times = []
for _ in range(5):
    t0 = time.perf_counter()
    it.invoke()
    times.append(time.perf_counter() - t0)
print(json.dumps({"added_bytes": added, "input_shape": [int(d) for d in inp["shape"]],
                  "invoke_ms": sorted(times)[2] * 1000.0}))
"""


def measure(path: Path, xnnpack: bool, threads: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), "on" if xnnpack else "off", str(threads)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise SystemExit(f"bench.tflite_memory: {path.name}: {(res.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from edge_agent.detectors.runtime import REFERENCE_BUNDLE

    p = argparse.ArgumentParser(prog="python -m bench.tflite_memory", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE, help="bundle folder (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    args = p.parse_args(argv)
    files = sorted(args.bundle.glob("*-int8.tflite"))
    if not files:
        print(f"bench.tflite_memory: no *-int8.tflite in {args.bundle}", file=sys.stderr)
        return 2
    print("| artifact | input pixels | XNNPACK on: MB (bytes/px) | ms | XNNPACK off: MB | ms |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for f in files:
        on, off = measure(f, True, args.threads), measure(f, False, args.threads)
        _, h, w, _ = on["input_shape"]
        rows.append({"artifact": f.name, "pixels": h * w, "xnnpack_mb": on["added_bytes"] / 2**20,
                     "plain_mb": off["added_bytes"] / 2**20, "xnnpack_ms": on["invoke_ms"],
                     "plain_ms": off["invoke_ms"]})
        print(f"| {f.name} | {h * w:,} | {on['added_bytes'] / 2**20:.0f} ({on['added_bytes'] / (h * w):.0f}) "
              f"| {on['invoke_ms']:.1f} | {off['added_bytes'] / 2**20:.0f} | {off['invoke_ms']:.1f} |")
    print(json.dumps({"threads": args.threads, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
