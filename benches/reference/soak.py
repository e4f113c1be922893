"""Memory soak of the agent at line rate: peak RSS and its growth over a long run.

Run by `benches/run-soak`. Starts its own Mosquitto on a free loopback port and `defect-agent run`
(2 workers, a hot folder, `after = "delete"`, the shipped bundle unless `--bundle`), then renames
one sample frame into the hot folder every 1/`--rate` seconds for `--minutes` minutes, the way a
camera's FTP upload lands. Every 10 s it samples the agent's resident set (`VmRSS`) and its peak
(`VmHWM`) from /proc, and counts the decisions a subscriber received. Prints a summary and writes
every sample to `--csv`.

Growth is reported two ways after the warm-up minute: from that minute's sample to the last,
and as the least-squares trend over every sample, scaled to 30 minutes (the resident set moves
by a few MiB between samples as the allocator reuses memory). The peak is the kernel's
high-water mark over the whole run.
"""

import argparse
import csv
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", type=Path, required=True, help="defect-agent binary")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models/shipped/surface-classifier.dmb")
    parser.add_argument("--frames", type=Path, default=ROOT / "models/samples", help="folder of .jpg frames")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="frames per second")
    parser.add_argument("--csv", type=Path, default=ROOT / "target/soak.csv")
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of `pid`, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def rss_trend_per_30_minutes(samples: list[tuple]) -> float:
    """Least-squares slope of the resident set (KiB) over time, scaled to 30 minutes; the
    resident set moves by a few MiB from sample to sample as the allocator reuses memory, so
    two end points alone say little."""
    if len(samples) < 2:
        return 0.0
    xs = [s[0] for s in samples]
    ys = [s[4] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return slope * 1800.0


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"mosquitto does not listen on 127.0.0.1:{port}")


def main() -> None:
    args = parse_args()
    frames = sorted(args.frames.glob("*.jpg"))
    if not frames:
        raise SystemExit(f"no .jpg frames in {args.frames}")
    payloads = [f.read_bytes() for f in frames]
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([args.mosquitto, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = None
    try:
        wait_for_port(port)
        received = {"decisions": 0, "no_decision": 0}
        lock = threading.Lock()

        def on_message(_client, _userdata, message) -> None:
            with lock:
                received["decisions"] += 1
                if b'"result":"no_decision"' in message.payload:
                    received["no_decision"] += 1

        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-subscriber")
        subscriber.on_message = on_message
        subscriber.connect("127.0.0.1", port)
        subscriber.subscribe("soak/+/decision", qos=1)
        subscriber.loop_start()

        hot, staging, state = work / "hot", work / "staging", work / "state"
        for folder in (hot, staging, state):
            folder.mkdir()
        config = work / "defect-agent.toml"
        config.write_text(
            f"""[agent]
workers = 2
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "v3.1.1"
client_id = "soak-agent"
topic_prefix = "soak"
payload = "json"

[[station]]
id = "line-1"

[station.hot_folder]
path = "{hot}"
part_id_pattern = 'part-(?P<part>\\d+)'
after = "delete"
"""
        )
        log = open(work / "agent.log", "wb")
        agent = subprocess.Popen([str(args.agent), "run", "--config", str(config), "--bundle", str(args.bundle)], stdout=log, stderr=log)
        samples = []
        sent = 0
        start = time.monotonic()
        end = start + args.minutes * 60.0
        next_frame, next_sample = start, start
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                if agent.poll() is not None:
                    raise SystemExit(f"defect-agent exited with {agent.returncode}; see {work / 'agent.log'}")
                rss, hwm = memory_kib(agent.pid)
                with lock:
                    samples.append((round(now - start, 1), sent, received["decisions"], received["no_decision"], rss, hwm))
                next_sample += 10.0
            if now >= next_frame:
                sent += 1
                staged = staging / f"part-{sent}.jpg"
                staged.write_bytes(payloads[sent % len(payloads)])
                staged.rename(hot / staged.name)
                next_frame += 1.0 / args.rate
            time.sleep(max(0.0, min(next_frame, next_sample) - time.monotonic()))
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            with lock:
                if received["decisions"] >= sent:
                    break
            time.sleep(0.1)
        rss, hwm = memory_kib(agent.pid)
        with lock:
            samples.append((round(time.monotonic() - start, 1), sent, received["decisions"], received["no_decision"], rss, hwm))
        subscriber.loop_stop()
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        broker.terminate()
        broker.wait(timeout=10)

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "frames_sent", "decisions", "no_decisions", "rss_kib", "hwm_kib"])
        writer.writerows(samples)
    warm = next((s for s in samples if s[0] >= 60.0), samples[0])
    last = samples[-1]
    growth = 100.0 * (last[4] - warm[4]) / warm[4]
    trend = 100.0 * rss_trend_per_30_minutes([s for s in samples if s[0] >= 60.0]) / warm[4]
    print(f"soak: {args.minutes:g} min at {args.rate:g} frames/s, {last[1]} frames sent, {last[2]} decisions received ({last[3]} no decision)")
    print(f"RSS after the warm-up minute {warm[4] / 1024:.1f} MiB, at the end {last[4] / 1024:.1f} MiB: {growth:+.2f} %")
    print(f"RSS trend after warm-up (least-squares slope over every sample): {trend:+.2f} % per 30 min")
    print(f"peak RSS (VmHWM) {last[5] / 1024:.1f} MiB; samples in {args.csv}")
    shutil.rmtree(work, ignore_errors=True)
    if last[2] < last[1]:
        sys.exit(f"{last[1] - last[2]} frame(s) got no decision message")


if __name__ == "__main__":
    main()
