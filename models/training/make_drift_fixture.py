"""Per-frame statistics of held-out frames, as the agent measures them, for testing drift detection.

This module owns the fixture under `models/testdata/drift/`: two CSV files with one row per
held-out frame (seed, label, the model input's brightness and contrast, the highest defect score
and the agent's pass/reject decision), so that the agent's data-drift detector can be tested for
its false-alarm rate and its detection delay without committing thousands of images.

Frames come from the scene generator (`surfaces.render_frame`) with seeds of their own (`DRIFT`,
disjoint from every split in `dataset` and from the sample frames), labels cycling with the seed
as in every split, so the class mix is that of the validation set the bundle's baseline came
from. Each frame is JPEG-encoded exactly like the sample frames in `models/samples/` (quality
90, `preprocess.encode_jpeg`) twice: as rendered (`normal.csv`), and "under poor lighting"
with every pixel value multiplied by `DARK_GAIN`, rounded and clipped to 0-255 (`dark.csv`).
The statistics are not recomputed here: the built agent classifies the JPEG files with
`defect-agent classify --json` on the shipped bundle, and the CSV files record what it reports,
so they are exactly what the agent's preprocessing and the shipped model produce.

Usage: `python make_drift_fixture.py [--agent target/release/defect-agent] [--workers 2]`, from
anywhere; the agent must be built first (`cargo build -p defect-agent`).
"""

import argparse
import json
import multiprocessing
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

import dataset
import preprocess
from defects import LABELS
from surfaces import render_frame

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHIPPED = HERE.parent / "shipped"
BUNDLE_PATH = SHIPPED / "surface-classifier.dmb"
MANIFEST_PATH = SHIPPED / "manifest.toml"
OUT_DIR = HERE.parent / "testdata" / "drift"

DRIFT = dataset.Split("drift", 310_000, 4000)
"""Seeds of the fixture's frames: 800 per class, after the sample frames' seeds 300000-300029."""

DARK_GAIN = 0.55
"""Factor on every pixel value of a frame "under poor lighting"."""

FILES_PER_CALL = 200
"""JPEG files per `defect-agent classify` run (half of them normal, half dark)."""

VARIANTS = ("normal", "dark")
"""The two renderings of each frame, in the order they are classified; also the CSV file names."""

HEADER = "seed,label,brightness,contrast,defect_score,result"


def check_seeds(split: dataset.Split) -> None:
    """Refuses a seed range that overlaps a training, validation, test or sample split."""
    for other in (*dataset.SPLITS, dataset.SAMPLES):
        if split.start < other.start + other.count and other.start < split.start + split.count:
            raise SystemExit(f"{split.describe()} overlaps {other.describe()}")


def darken(frame: np.ndarray, gain: float = DARK_GAIN) -> np.ndarray:
    """The frame under poorer lighting: every value times `gain`, rounded and clipped to 8 bits."""
    return np.clip(np.rint(frame.astype(np.float64) * gain), 0, 255).astype(np.uint8)


def render_jpegs(seed: int) -> tuple[bytes, bytes]:
    """JPEG bytes of the frame of `seed` as rendered and darkened, encoded like the sample frames."""
    frame = render_frame(seed, LABELS[dataset.label_of(seed)])
    return preprocess.encode_jpeg(frame), preprocess.encode_jpeg(darken(frame))


def default_agent() -> Path | None:
    """The most recently built of target/debug/defect-agent and target/release/defect-agent."""
    built = [p for p in (REPO / "target" / d / "defect-agent" for d in ("debug", "release")) if p.exists()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


def classify(agent: Path, bundle: Path, files: list[Path]) -> list[dict]:
    """The agent's JSON outcome of each file, in order; stops on any error or missing statistic."""
    command = [str(agent), "classify", "--json", "--bundle", str(bundle), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{agent} classify exited with {done.returncode}: {done.stderr.strip()}\n{done.stdout[-2000:]}")
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if len(outcomes) != len(files):
        raise SystemExit(f"{agent} printed {len(outcomes)} lines for {len(files)} files")
    for file, outcome in zip(files, outcomes):
        if outcome.get("file") != str(file) or outcome.get("result") not in ("pass", "reject"):
            raise SystemExit(f"unexpected outcome for {file}: {outcome}")
        if "input" not in outcome:
            raise SystemExit(f"{agent} reports no input statistics; rebuild it (cargo build -p defect-agent)")
    return outcomes


def csv_row(seed: int, outcome: dict, defects: list[str]) -> str:
    """One CSV row: seed, label, brightness and contrast (2 decimals), highest defect score (6), result."""
    defect_score = max(float(outcome["scores"][d]) for d in defects)
    stats = outcome["input"]
    label = LABELS[dataset.label_of(seed)]
    return f"{seed},{label},{stats['brightness']:.2f},{stats['contrast']:.2f},{defect_score:.6f},{outcome['result']}"


def summary(name: str, rows: list[str]) -> str:
    """Mean and standard deviation of brightness and contrast, and the reject fraction, of CSV rows."""
    fields = [r.split(",") for r in rows]
    brightness = np.array([float(f[2]) for f in fields])
    contrast = np.array([float(f[3]) for f in fields])
    rejected = np.mean([f[5] == "reject" for f in fields])
    return (
        f"{name}: {len(rows)} frames, brightness {brightness.mean():.2f} +- {brightness.std():.2f}, "
        f"contrast {contrast.mean():.2f} +- {contrast.std():.2f}, reject fraction {rejected:.4f}"
    )


def baseline_summary(manifest: dict) -> str:
    """Mean and standard deviation of the manifest's baseline histograms (bin centres), and its reject rate."""
    parts = []
    for name in ("brightness", "contrast"):
        hist = manifest["baseline"][name]
        counts = np.array(hist["counts"], np.float64)
        width = (hist["max"] - hist["min"]) / len(counts)
        centres = hist["min"] + width * (np.arange(len(counts)) + 0.5)
        mean = (counts * centres).sum() / counts.sum()
        std = np.sqrt((counts * (centres - mean) ** 2).sum() / counts.sum())
        parts.append(f"{name} {mean:.2f} +- {std:.2f}")
    return f"baseline ({manifest['baseline']['frames']} validation frames): {', '.join(parts)}, reject rate {manifest['baseline']['reject_rate']}"


def main() -> None:
    """Renders the frames, has the agent classify them in batches, and writes the two CSV files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", type=Path, default=default_agent(), help="built defect-agent binary")
    parser.add_argument("--bundle", type=Path, default=BUNDLE_PATH, help="model bundle (default: the shipped one)")
    parser.add_argument("--frames", type=int, default=DRIFT.count, help="number of frames (a multiple of 5)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args()
    if args.agent is None or not args.agent.exists():
        raise SystemExit("no defect-agent binary; build it (cargo build -p defect-agent) or pass --agent")
    if args.frames % len(LABELS):
        raise SystemExit(f"--frames must be a multiple of {len(LABELS)} so that every class is equally represented")
    split = dataset.Split(DRIFT.name, DRIFT.start, args.frames)
    check_seeds(split)
    manifest = tomllib.loads(MANIFEST_PATH.read_text())
    defects = list(manifest["output"]["defects"])
    seeds = list(split.seeds)
    per_call = FILES_PER_CALL // len(VARIANTS)
    rows: dict[str, list[str]] = {v: [] for v in VARIANTS}
    render_seconds = classify_seconds = 0.0
    began = time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(args.workers) if args.workers > 1 else None
    try:
        with tempfile.TemporaryDirectory(prefix="drift-frames-") as folder:
            for first in range(0, len(seeds), per_call):
                batch = seeds[first : first + per_call]
                started = time.perf_counter()
                jpegs = pool.map(render_jpegs, batch) if pool else [render_jpegs(s) for s in batch]
                files = {v: [] for v in VARIANTS}
                for seed, encoded in zip(batch, jpegs):
                    for variant, data in zip(VARIANTS, encoded):
                        path = Path(folder) / f"{seed}-{LABELS[dataset.label_of(seed)]}-{variant}.jpg"
                        path.write_bytes(data)
                        files[variant].append(path)
                render_seconds += time.perf_counter() - started
                started = time.perf_counter()
                outcomes = classify(args.agent, args.bundle, files["normal"] + files["dark"])
                classify_seconds += time.perf_counter() - started
                for index, variant in enumerate(VARIANTS):
                    chunk = outcomes[index * len(batch) : (index + 1) * len(batch)]
                    rows[variant] += [csv_row(s, o, defects) for s, o in zip(batch, chunk)]
                for path in files["normal"] + files["dark"]:
                    path.unlink()
                done = first + len(batch)
                print(
                    f"{done}/{len(seeds)} frames, render {render_seconds / done:.3f} s/frame "
                    f"(2 JPEGs), classify {classify_seconds / (2 * done) * 1000:.1f} ms/file, "
                    f"{time.perf_counter() - began:.0f} s",
                    flush=True,
                )
    finally:
        if pool:
            pool.close()
            pool.join()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        path = OUT_DIR / f"{variant}.csv"
        path.write_text("\n".join([HEADER, *rows[variant]]) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)")
        print(summary(variant, rows[variant]))
    print(baseline_summary(manifest))
    print(
        f"{split.describe()}, {args.workers} rendering process(es): render {render_seconds:.0f} s, "
        f"classify {classify_seconds:.0f} s, total {time.perf_counter() - began:.0f} s"
    )


if __name__ == "__main__":
    main()
