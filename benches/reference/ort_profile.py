"""Per-operator profile of an ONNX model in ONNX Runtime, one thread, from its own profiler.

Usage: ort_profile.py MODEL.onnx [RUNS]

Prints the median of plain runs, each node's median kernel time and share, the graph's
multiply-accumulates in Conv, Gemm and MatMul nodes (counted from the shapes ONNX Runtime
reports for the unoptimised graph) and the arithmetic rate the median run reaches.
"""

import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort


def session(path, optimise, prefix=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if prefix:
        options.enable_profiling = True
        options.profile_file_prefix = prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def node_events(profile_path):
    with open(profile_path) as f:
        events = json.load(f)
    os.remove(profile_path)
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def shapes(arg):
    return [list(next(iter(d.values()))) for d in arg]


def multiply_accumulates(path, feed):
    """Conv, Gemm and MatMul multiply-accumulates of one run of the unoptimised graph."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, optimise=False, prefix=os.path.join(tmp, "shapes"))
        s.run(None, feed)
        macs = 0
        for e in node_events(s.end_profiling()):
            op = e["args"].get("op_name")
            ins = shapes(e["args"].get("input_type_shape", []))
            outs = shapes(e["args"].get("output_type_shape", []))
            if op == "Conv" and len(ins) >= 2 and outs:
                weight = ins[1]
                macs += math.prod(outs[0]) * math.prod(weight[1:])
            elif op in ("Gemm", "MatMul") and len(ins) >= 2 and outs:
                macs += math.prod(outs[0]) * ins[0][-1]
        return macs


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    probe = session(path, optimise=True)
    spec = probe.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {spec.name: x}
    for _ in range(30):
        probe.run(None, feed)
    plain = []
    for _ in range(runs):
        start = time.perf_counter()
        probe.run(None, feed)
        plain.append((time.perf_counter() - start) * 1e3)
    whole = statistics.median(plain)

    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, optimise=True, prefix=os.path.join(tmp, "ort"))
        for _ in range(30 + runs):
            s.run(None, feed)
        per_node = collections.defaultdict(list)
        for e in node_events(s.end_profiling()):
            per_node[(e["args"].get("op_name"), e["name"][: -len("_kernel_time")])].append(e["dur"] / 1e3)
    rows = sorted(((statistics.median(v[30:] or v), k) for k, v in per_node.items()), reverse=True)
    total = sum(r[0] for r in rows)
    macs = multiply_accumulates(path, feed)
    print(f"ONNX Runtime {ort.__version__}, input {shape}: median run {whole:.3f} ms over {runs} runs; "
          f"sum of node medians {total:.3f} ms")
    if macs:
        print(f"{macs / 1e6:.1f} M multiply-accumulates in Conv, Gemm and MatMul: "
              f"{2 * macs / (whole * 1e-3) / 1e9:.1f} GFLOP/s at ONNX Runtime's median, "
              f"ms at a given rate R GFLOP/s: {2 * macs / 1e6:.1f} / R")
    print("| node | operator | median, ms | share |")
    print("|---|---|---|---|")
    for t, (op, name) in rows:
        if t >= 0.0005:
            print(f"| {name} | {op} | {t:.3f} | {100 * t / total:.1f} % |")


if __name__ == "__main__":
    main()
