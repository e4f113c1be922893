"""Everything `model-bundle create` needs besides the ONNX file, and the repository's sample frames.

This module owns `models/shipped/manifest.toml` (see `models/MANIFEST.md`), the golden samples
under `models/shipped/golden/`, the drift baseline computed on the validation set, and the
sample camera frames under `models/samples/` with their `labels.csv`. It reads the trained
model (`models/shipped/surface-classifier.onnx`) and the reject thresholds chosen by
`train.py` (`models/training/out/metrics.json`), and checks that every sample frame is
classified correctly through the agent's preprocessing.

Usage: `python make_bundle_inputs.py`.
"""

import json
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

import dataset
import export
import metrics
import preprocess
from defects import DEFECTS, LABELS
from surfaces import render_frame

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "shipped"
SAMPLES_DIR = HERE.parent / "samples"
ONNX_PATH = SHIPPED / "surface-classifier.onnx"
METRICS_PATH = HERE / "out" / "metrics.json"
JPEG_DECODE = tomllib.loads(dataset.INPUT_MANIFEST.read_text())["preprocess"].get("jpeg_decode", "full")
"""How the training inputs were decoded (`input-manifest.toml`); the bundle's manifest says the same."""
GOLDEN_PER_CLASS = 2
SAMPLES_PER_CLASS = 6


def histogram(values: np.ndarray, low: float, high: float, bins: int) -> list[int]:
    """Counts in `bins` equal-width bins over [low, high); values outside go to the first or last bin."""
    index = np.floor((np.asarray(values, np.float64) - low) / (high - low) * bins).astype(np.int64)
    return np.bincount(np.clip(index, 0, bins - 1), minlength=bins).tolist()


def write_golden(session) -> list[tuple[str, list[float]]]:
    """Saves the first test frames of each class as golden PNGs; returns (file, expected scores)."""
    (SHIPPED / "golden").mkdir(parents=True, exist_ok=True)
    golden = []
    for index, label in enumerate(LABELS):
        seeds = [s for s in dataset.TEST.seeds if dataset.TEST.label_of(s) == index][:GOLDEN_PER_CLASS]
        for number, seed in enumerate(seeds):
            name = f"golden/{label}-{number}.png"
            Image.fromarray(dataset.model_input_for_seed(dataset.TEST, seed), mode="L").save(SHIPPED / name)
            pixels = np.asarray(Image.open(SHIPPED / name).convert("L"))
            scores = export.onnx_scores(session, preprocess.normalise(pixels))[0]
            golden.append((name, [round(float(s), 6) for s in scores]))
    return golden


def baseline(session, thresholds: dict[str, float]) -> dict:
    """Drift baseline of the validation set: input statistics, defect scores and reject rate."""
    images, _ = dataset.load(dataset.VALIDATION)
    scores = export.onnx_scores(session, preprocess.normalise(images))
    defect_score = scores[:, metrics.DEFECT_INDICES].max(axis=1)
    rejected = metrics.is_defect(metrics.decide(scores, thresholds))
    return {
        "frames": len(images),
        "brightness": (0.0, 256.0, histogram([preprocess.brightness(i) for i in images], 0.0, 256.0, 32)),
        "contrast": (0.0, 128.0, histogram([preprocess.contrast(i) for i in images], 0.0, 128.0, 32)),
        "defect_score": (0.0, 1.0, histogram(defect_score, 0.0, 1.0, 20)),
        "reject_rate": float(rejected.mean()),
    }


def manifest_text(golden: list, base: dict, thresholds: dict[str, float], report: dict) -> str:
    """The bundle manifest in TOML, field for field as `models/MANIFEST.md` defines it."""
    def floats(values: list[float]) -> str:
        return "[" + ", ".join(repr(float(v)) for v in values) + "]"

    def strings(values) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    def hist(name: str) -> str:
        low, high, counts = base[name]
        return f"{name} = {{ min = {low}, max = {high}, counts = [{', '.join(map(str, counts))}] }}"

    test = report["test"]
    lines = [
        "format_version = 1",
        'name = "surface-classifier"',
        'version = "1.0.0"',
        "model_version = 1",
        'min_agent_version = "0.1.0"',
        'description = "Five-class surface inspection classifier"',
        "",
        "[input]",
        'tensor = "frame"',
        "shape = [1, 1, 256, 320]",
        'layout = "nchw"',
        'color = "gray"',
        'dtype = "f32"',
        "",
        "[preprocess]",
        'resize = "area"',
        *([f'jpeg_decode = "{JPEG_DECODE}"'] if JPEG_DECODE != "full" else []),
        f"scale = {preprocess.SCALE!r}",
        f"mean = [{preprocess.MEAN}]",
        f"std = [{preprocess.STD}]",
        "",
        "[output]",
        'tensor = "scores"',
        'kind = "probabilities"',
        f"labels = {strings(LABELS)}",
        f"defects = {strings(DEFECTS)}",
        "",
        "[output.reject_threshold]",
        *(f"{d} = {thresholds[d]}" for d in DEFECTS),
        "",
        "[validation]",
        "tolerance = 0.01",
        "latency_budget_ms = 25.0",
    ]
    for file, expected in golden:
        lines += ["", "[[validation.golden]]", f'file = "{file}"', f"expected = {floats(expected)}"]
    lines += [
        "",
        "[baseline]",
        f"frames = {base['frames']}",
        hist("brightness"),
        hist("contrast"),
        hist("defect_score"),
        f"reject_rate = {round(base['reject_rate'], 4)}",
        "",
        "[provenance]",
        f'dataset = "synthetic surfaces (models/training/surfaces.py), {dataset.TRAIN.describe()}, '
        f'{dataset.VALIDATION.describe()}; golden samples from {dataset.TEST.describe()}"',
        'training_script = "models/training/train.py"',
        f'notes = "held-out {test["frames"]} test frames: good-vs-defect accuracy '
        f'{test["good_vs_defect_accuracy"]:.4f}, defect recall {test["defect_recall"]:.4f}; '
        'manifest, golden samples and baseline written by models/training/make_bundle_inputs.py"',
    ]
    return "\n".join(lines) + "\n"


def write_samples(session, thresholds: dict[str, float]) -> list[str]:
    """Writes full-resolution JPEG sample frames and labels.csv; returns the misclassified ones.

    Each sample is checked through the agent's own decode and preprocessing
    (`dataset.agent_images`), the path it takes on the line."""
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    rows, names = ["file,label"], {}
    for number, seed in enumerate(dataset.SAMPLES.seeds, start=1):
        label = LABELS[dataset.label_of(seed)]
        name = f"{number:04d}-{label}.jpg"
        (SAMPLES_DIR / name).write_bytes(preprocess.encode_jpeg(render_frame(seed, label)))
        rows.append(f"{name},{label}")
        names[name] = label
    (SAMPLES_DIR / "labels.csv").write_text("\n".join(rows) + "\n")
    images, files = dataset.agent_images(SAMPLES_DIR / "labels.csv")
    wrong = []
    for image, file in zip(images, files, strict=True):
        name = Path(file).name
        scores = export.onnx_scores(session, preprocess.normalise(image))
        decided = LABELS[metrics.decide(scores, thresholds)[0]]
        if decided != names[name]:
            wrong.append(f"{name} decided {decided} (scores {np.round(scores[0], 3).tolist()})")
    return wrong


def main() -> None:
    """Writes the golden samples, the manifest and the sample frames, and checks the samples."""
    if dataset.SAMPLES.count != SAMPLES_PER_CLASS * len(LABELS):
        raise SystemExit("the sample seed range must hold the same number of frames for every class")
    report = json.loads(METRICS_PATH.read_text())
    thresholds = report["reject_thresholds"]
    session = export.onnx_session(ONNX_PATH)
    golden = write_golden(session)
    text = manifest_text(golden, baseline(session, thresholds), thresholds, report)
    tomllib.loads(text)
    (SHIPPED / "manifest.toml").write_text(text)
    print(f"wrote {SHIPPED / 'manifest.toml'} with {len(golden)} golden samples")
    wrong = write_samples(session, thresholds)
    print(f"wrote {dataset.SAMPLES.count} sample frames to {SAMPLES_DIR}")
    for line in wrong:
        print(f"MISCLASSIFIED sample {line}")
    if wrong:
        raise SystemExit(f"{len(wrong)} sample frame(s) misclassified")


if __name__ == "__main__":
    main()
