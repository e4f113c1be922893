"""Train, validation and test sets: camera frames rendered in parallel, model inputs from the agent.

This module owns which seeds make up each split, how a seed maps to its label, and the cache.
Splits use disjoint seed ranges. Train and validation labels cycle through `LABELS`, so those
splits are balanced over the five classes; the test split has the line's mix (about 70 % good
parts, `render_set.label_for_seed`).

Making a split takes two steps, both cached under `models/training/cache/`:

1. **Frames.** Every seed is rendered at 1280x1024 and written as the line camera writes it
   (JPEG quality 90) into an image folder, `frames-<digest>/<split>/<label>/s<seed>.jpg`, with the
   defect boxes in frame pixels beside it (`<split>-boxes.npy`, rows of top, left, bottom, right;
   -1 for good parts). The digest covers the scene and defect generators, so changing them
   renders again instead of reusing stale frames.
2. **Model inputs.** `model-bundle tensors` turns the folder into model-input tensors with the
   agent's own Rust decode and preprocessing under `input-manifest.toml` (the shipped model's
   input and preprocessing: JPEGs decoded at a quarter of their size by DCT scaling, straight to
   320x256). The tensors are turned back into the 8-bit images they were normalised from
   (exactly: normalisation is an invertible table per 8-bit value) and kept as uint8 `.npy`,
   with a digest of the manifest's `[input]` and `[preprocess]` in the name. Training therefore
   never decodes or resizes a frame itself: it sees exactly what the agent feeds tract.

Run as a script to build (or check) what training needs: `python dataset.py`.
"""

import hashlib
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

import preprocess
import tensors_io
from defects import LABELS
from surfaces import render

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "cache"
INPUT_MANIFEST = HERE / "input-manifest.toml"
WORKERS = 2
TEST_GOOD_SHARE = 0.7
"""Share of good parts in the test split, as on the line."""


@dataclass(frozen=True)
class Split:
    """A contiguous range of frame seeds; `good_share` set means the line's label mix."""

    name: str
    start: int
    count: int
    good_share: float | None = None

    @property
    def seeds(self) -> range:
        """The seeds of this split, in order."""
        return range(self.start, self.start + self.count)

    def describe(self) -> str:
        """Human-readable seed range, such as `train seeds 0-5999`."""
        mix = f", {round(self.good_share * 100)} % good" if self.good_share is not None else ""
        return f"{self.name} seeds {self.start}-{self.start + self.count - 1}{mix}"

    def label_of(self, seed: int) -> int:
        """Class index of the frame rendered from `seed` in this split."""
        if self.good_share is None:
            return label_of(seed)
        from render_set import label_for_seed

        return LABELS.index(label_for_seed(seed, self.good_share))


TRAIN = Split("train", 0, 10000)
VALIDATION = Split("validation", 100_000, 1500)
TEST = Split("test", 450_000, 2000, TEST_GOOD_SHARE)
SAMPLES = Split("samples", 300_000, 30)
SPLITS = (TRAIN, VALIDATION, TEST)


def label_of(seed: int) -> int:
    """Class index of a frame of the balanced splits (train, validation, samples)."""
    return seed % len(LABELS)


def _render_one(seed: int, label: int, folder: Path) -> np.ndarray:
    """Renders the frame of `seed`, writes its JPEG into `folder` and returns its defect box."""
    frame = render(seed, LABELS[label])
    path = folder / LABELS[label] / f"s{seed}.jpg"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(preprocess.encode_jpeg(frame.pixels))
    temporary.replace(path)
    box = np.full(4, -1, np.int16)
    if frame.defect_box is not None:
        box[:] = frame.defect_box
    return box


def frames(split: Split) -> tuple[Path, np.ndarray]:
    """The image folder of `split` and its defect boxes in frame pixels, rendered when not cached."""
    root = CACHE_DIR / f"frames-{generator_digest()}"
    folder, boxes_path = root / split.name, root / f"{split.name}-{split.start}-{split.count}-boxes.npy"
    if boxes_path.exists():
        return folder, np.load(boxes_path)
    for label in LABELS:
        (folder / label).mkdir(parents=True, exist_ok=True)
    labels = [split.label_of(s) for s in split.seeds]
    boxes = np.empty((split.count, 4), np.int16)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        jobs = pool.starmap(partial(_render_one, folder=folder), zip(split.seeds, labels), chunksize=8)
        for i, box in enumerate(jobs):
            boxes[i] = box
    _save(boxes_path, boxes)
    return folder, boxes


def model_inputs(split: Split) -> np.ndarray:
    """The 8-bit model-input images (N, 256, 320) of `split` in seed order, as the agent makes them."""
    folder, _ = frames(split)
    path = CACHE_DIR / f"{split.name}-{split.start}-{split.count}-{generator_digest()}-{input_digest()}.npy"
    if path.exists():
        return np.load(path)
    images, files = agent_images(folder)
    index = {int(Path(f).stem.lstrip("s")): i for i, f in enumerate(files)}
    missing = [s for s in split.seeds if s not in index]
    if missing:
        raise SystemExit(f"model-bundle tensors skipped {len(missing)} frame(s) of {split.describe()}, first seed {missing[0]}")
    ordered = images[[index[s] for s in split.seeds]]
    _save(path, ordered)
    return ordered


def agent_images(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The 8-bit model-input images of every frame in an image folder, through the agent's own
    decode and preprocessing (`model-bundle tensors` under `input-manifest.toml`), with the file
    each came from."""
    CACHE_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tensors-", dir=CACHE_DIR) as out:
        subprocess.run(
            [model_bundle(), "tensors", str(folder), "--manifest", str(INPUT_MANIFEST), "--out", out],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tensors = tensors_io.load(out)
        return to_images(np.asarray(tensors.inputs)), list(tensors.files)


def to_images(inputs: np.ndarray, chunk: int = 500) -> np.ndarray:
    """The 8-bit images (N, H, W) that normalised single-channel NCHW inputs were made from,
    converted `chunk` frames at a time (the float inputs of a split can exceed memory)."""
    images = np.empty((inputs.shape[0], *inputs.shape[2:]), np.uint8)
    for start in range(0, len(inputs), chunk):
        values = (np.asarray(inputs[start : start + chunk, 0], np.float64) * preprocess.STD + preprocess.MEAN) / preprocess.SCALE
        rounded = np.rint(values)
        if np.abs(values - rounded).max() > 0.01 or rounded.min() < 0 or rounded.max() > 255:
            raise SystemExit("model-bundle tensors did not normalise with the manifest's mean and std")
        images[start : start + chunk] = rounded
    return images


def model_bundle() -> str:
    """The `model-bundle` tool: on PATH, else the workspace's release or debug build."""
    found = shutil.which("model-bundle")
    if found:
        return found
    root = HERE.parent.parent / "target"
    for profile in ("release", "debug"):
        candidate = root / profile / "model-bundle"
        if candidate.exists():
            return str(candidate)
    raise SystemExit("model-bundle not found: `cargo build --release -p defect-models --bin model-bundle`")


def load(split: Split, with_boxes: bool = False) -> tuple[np.ndarray, ...]:
    """Images (N, 256, 320) uint8 and labels (N,) int64 of a split, and with `with_boxes` also
    the defect boxes in model-input pixels (N, 4) int16."""
    images = model_inputs(split)
    labels = np.array([split.label_of(s) for s in split.seeds], dtype=np.int64)
    if not with_boxes:
        return images, labels
    _, boxes = frames(split)
    f = preprocess.FACTOR
    scaled = np.where(boxes[:, :1] >= 0, np.concatenate([boxes[:, :2] // f, -(-boxes[:, 2:] // f)], axis=1), -1)
    return images, labels, scaled.astype(np.int16)


def model_input_for_seed(split: Split, seed: int) -> np.ndarray:
    """The 8-bit model-input image of one seed of `split`."""
    return model_inputs(split)[seed - split.start]


def _save(path: Path, array: np.ndarray) -> None:
    """Writes `array` to `path` atomically, so an interrupted run leaves no partial cache file."""
    CACHE_DIR.mkdir(exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, array)
    temporary.replace(path)


def generator_digest() -> str:
    """Short digest of everything that decides a rendered frame's pixels and file."""
    digest = hashlib.sha256()
    for name in ("surfaces.py", "defects.py"):
        digest.update((HERE / name).read_bytes())
    digest.update(f"jpeg={preprocess.JPEG_QUALITY}".encode())
    return digest.hexdigest()[:12]


def input_digest() -> str:
    """Short digest of the input manifest, which decides how a frame becomes the model input."""
    return hashlib.sha256(INPUT_MANIFEST.read_bytes()).hexdigest()[:12]


def main() -> None:
    """Renders every split, makes its model inputs and reports their size and the time taken."""
    only_frames = "--frames-only" in os.sys.argv
    for split in SPLITS:
        began = time.perf_counter()
        if only_frames:
            folder, _ = frames(split)
            print(f"{split.describe()}: frames in {folder} ({time.perf_counter() - began:.0f} s)", flush=True)
            continue
        images, labels = load(split)
        counts = np.bincount(labels, minlength=len(LABELS)).tolist()
        print(f"{split.describe()}: {images.shape} per class {counts} in {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
