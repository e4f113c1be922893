"""Reference frame path a Python user would write: Pillow decode, numpy, ONNX Runtime.

Run by the `frame_path` benchmark on the same files and the same ONNX model as the Rust path,
single-threaded like one tract worker. Prints per-frame timings in milliseconds as JSON, and the
machine's one-core f32 GEMM rate (`gemm_gflops`: NumPy's BLAS on 1024x1024 matrices, median of
20; the benchmark runs this with OPENBLAS_NUM_THREADS=1), the ceiling both engines are held to.
"""

import argparse
import io
import json
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="ONNX file")
    parser.add_argument("--input", required=True, help="ONNX input name")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--mean", type=float, required=True)
    parser.add_argument("--std", type=float, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("files", nargs="+")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    frames = [open(path, "rb").read() for path in args.files]
    timings = {"decode": [], "preprocess": [], "inference": [], "frame": []}
    for round_index in range(args.rounds + 1):
        for data in frames:
            start = time.perf_counter()
            image = Image.open(io.BytesIO(data)).convert("L")
            decoded = time.perf_counter()
            small = image.resize((args.width, args.height), Image.Resampling.BOX)
            tensor = (np.asarray(small, dtype=np.float32) / 255.0 - args.mean) / args.std
            tensor = tensor[np.newaxis, np.newaxis, :, :]
            prepared = time.perf_counter()
            session.run(None, {args.input: tensor})
            done = time.perf_counter()
            if round_index == 0:
                continue  # warm-up round
            timings["decode"].append((decoded - start) * 1000)
            timings["preprocess"].append((prepared - decoded) * 1000)
            timings["inference"].append((done - prepared) * 1000)
            timings["frame"].append((done - start) * 1000)
    timings["gemm_gflops"] = gemm_gflops()
    print(json.dumps(timings))


def gemm_gflops(n: int = 1024, runs: int = 20) -> float:
    """Median rate of an n x n x n float32 matrix product on this thread, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


if __name__ == "__main__":
    main()
