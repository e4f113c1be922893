"""Reference hot-folder pipeline a Python user would write: inotify, Pillow, numpy, ONNX Runtime, paho-mqtt.

Run by the `end_to_end` benchmark beside `defect-agent run`, on the same frames, the same ONNX
model and the same broker. It watches a folder for frames renamed (or closed) into place, and
for each one: reads it, decodes it with Pillow (optionally with Pillow's DCT-scaled `draft`
decode), resizes it with a box filter, normalises it with numpy, runs ONNX Runtime, publishes a
decision `{"v":1,"part":..,"r":..,"c":..,"conf":..,"ts":..}` at QoS 1 and deletes the file.
`--workers` threads do this in parallel (Pillow, numpy and ONNX Runtime release the GIL), each
ONNX Runtime call single-threaded, like the agent's workers. Prints `ready` once connected and
watching; stops on SIGTERM or when stdin closes.
"""

import argparse
import json
import os
import queue
import re
import signal
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
from inotify_simple import INotify, flags
from PIL import Image

TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload", "~")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", required=True, help="hot folder to watch")
    parser.add_argument("--model", required=True, help="ONNX file")
    parser.add_argument("--input", required=True, help="ONNX input name")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--mean", type=float, required=True)
    parser.add_argument("--std", type=float, required=True)
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        help="CLASS:SCORE, a defect class index and its reject threshold (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True, help="decision topic")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--draft", action="store_true", help="DCT-scaled JPEG decode")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    thresholds = {}
    for item in args.threshold:
        index, score = item.split(":")
        thresholds[int(index)] = float(score)
    part_pattern = re.compile(r"part-(?P<part>\d+)")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    connected = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"reference-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda *_: connected.set()
    client.connect(args.host, args.port, keepalive=5)
    client.loop_start()
    if not connected.wait(30):
        sys.exit("reference: no connection to the broker")

    def classify(path: str) -> dict:
        with open(path, "rb") as file:
            image = Image.open(file)
            if args.draft:
                image.draft("L", (args.width, args.height))
            gray = image.convert("L")
        small = gray.resize((args.width, args.height), Image.Resampling.BOX)
        tensor = (np.asarray(small, dtype=np.float32) / 255.0 - args.mean) / args.std
        scores = session.run(None, {args.input: tensor[np.newaxis, np.newaxis, :, :]})[0][0]
        best = int(np.argmax(scores))
        reject = any(scores[i] >= t for i, t in thresholds.items())
        return {"r": 1 if reject else 0, "c": best, "conf": int(scores[best] * 1000)}

    jobs: "queue.Queue[str | None]" = queue.Queue()

    def worker() -> None:
        while (path := jobs.get()) is not None:
            match = part_pattern.search(os.path.basename(path))
            part = int(match.group("part")) if match else 0
            try:
                decision = classify(path)
                why = 0
            except Exception as error:  # noqa: BLE001 - any failure is a "no decision"
                print(f"reference: {path}: {error}", file=sys.stderr)
                decision, why = {"r": 2, "c": 0, "conf": 0}, 3
            payload = {"v": 1, "part": part, **decision, "ts": int(time.time() * 1000), "why": why}
            client.publish(args.topic, json.dumps(payload, separators=(",", ":")), qos=1)
            try:
                os.remove(path)
            except OSError as error:
                print(f"reference: cannot remove {path}: {error}", file=sys.stderr)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for thread in threads:
        thread.start()

    inotify = INotify()
    inotify.add_watch(args.folder, flags.MOVED_TO | flags.CLOSE_WRITE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    while not stop.is_set():
        for event in inotify.read(timeout=200):
            name = event.name
            if not name or name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
                continue
            jobs.put(os.path.join(args.folder, name))
    for _ in threads:
        jobs.put(None)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
