"""Train, validation and test sets of model-input images, generated in parallel and cached.

This module owns which seeds make up each split, how a seed maps to its label, and the cache
of generated images. Splits use disjoint seed ranges, and labels cycle through `LABELS` so that
every split is balanced over the five classes. An image is the 320x256 8-bit model input of a
rendered frame (JPEG round trip and 4x area downscale), stored as uint8 `.npy` under
`models/training/cache/`, next to the defect boxes in model-input pixels (int16 `.npy`, rows of
top, left, bottom, right; -1 for good parts). A cache file's name carries a digest of the
generator's source, so changing the scene or defect rendering regenerates the data instead of
reusing stale images.

Run as a script to build (or check) what training needs: `python dataset.py`.
"""

import hashlib
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import preprocess
from defects import LABELS
from surfaces import render

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "cache"
WORKERS = 2


@dataclass(frozen=True)
class Split:
    """A contiguous range of frame seeds."""

    name: str
    start: int
    count: int

    @property
    def seeds(self) -> range:
        """The seeds of this split, in order."""
        return range(self.start, self.start + self.count)

    def describe(self) -> str:
        """Human-readable seed range, such as `train seeds 0-5999`."""
        return f"{self.name} seeds {self.start}-{self.start + self.count - 1}"


TRAIN = Split("train", 0, 10000)
VALIDATION = Split("validation", 100_000, 1500)
TEST = Split("test", 200_000, 2000)
SAMPLES = Split("samples", 300_000, 30)
SPLITS = (TRAIN, VALIDATION, TEST)


def label_of(seed: int) -> int:
    """Class index of the frame rendered from `seed`."""
    return seed % len(LABELS)


def model_input_for_seed(seed: int) -> np.ndarray:
    """The 320x256 model-input image of the frame rendered from `seed`."""
    return labelled_input_for_seed(seed)[0]


def labelled_input_for_seed(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model-input image of `seed` and its defect box in model-input pixels (all -1 if good)."""
    frame = render(seed, LABELS[label_of(seed)])
    box = np.full(4, -1, np.int16)
    if frame.defect_box is not None:
        top, left, bottom, right = frame.defect_box
        f = preprocess.FACTOR
        box[:] = (top // f, left // f, -(-bottom // f), -(-right // f))
    return preprocess.model_input_image(frame.pixels), box


def load(split: Split, with_boxes: bool = False) -> tuple[np.ndarray, ...]:
    """Images (N, 256, 320) uint8 and labels (N,) int64 of a split, and with `with_boxes` also
    the defect boxes (N, 4) int16; from the cache, or freshly made when not cached."""
    stem = CACHE_DIR / f"{split.name}-{split.start}-{split.count}-{generator_digest()}"
    images_path, boxes_path = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + "-boxes.npy")
    if images_path.exists() and (boxes_path.exists() or not with_boxes):
        images = np.load(images_path)
        boxes = np.load(boxes_path) if with_boxes else None
    else:
        images, boxes = generate(split.seeds)
        _save(images_path, images)
        _save(boxes_path, boxes)
    labels = np.array([label_of(s) for s in split.seeds], dtype=np.int64)
    return (images, labels, boxes) if with_boxes else (images, labels)


def _save(path: Path, array: np.ndarray) -> None:
    """Writes `array` to `path` atomically, so an interrupted run leaves no partial cache file."""
    CACHE_DIR.mkdir(exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, array)
    temporary.replace(path)


def generate(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """Model-input images and defect boxes of `seeds`, rendered by `WORKERS` processes, in seed order."""
    images = np.empty((len(seeds), preprocess.INPUT_HEIGHT, preprocess.INPUT_WIDTH), np.uint8)
    boxes = np.empty((len(seeds), 4), np.int16)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        for i, (image, box) in enumerate(pool.imap(labelled_input_for_seed, seeds, chunksize=8)):
            images[i], boxes[i] = image, box
    return images, boxes


def generator_digest() -> str:
    """Short digest of everything that decides a cached image's pixels."""
    digest = hashlib.sha256()
    for name in ("surfaces.py", "defects.py"):
        digest.update((HERE / name).read_bytes())
    digest.update(f"jpeg={preprocess.JPEG_QUALITY} factor={preprocess.FACTOR}".encode())
    return digest.hexdigest()[:12]


def main() -> None:
    """Builds every split (with defect boxes for training) and reports its size and generation time."""
    for split in SPLITS:
        began = time.perf_counter()
        images, labels = load(split, with_boxes=split is TRAIN)[:2]
        counts = np.bincount(labels, minlength=len(LABELS)).tolist()
        print(f"{split.describe()}: {images.shape} per class {counts} in {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
