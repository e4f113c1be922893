"""Labelled camera frames written as an image-folder data set, like a factory's reviewed captures.

This module owns the image-folder layout `OUT/<label>/s<seed>.jpg` (one folder per label in
`defects.LABELS`, full 1280x1024 JPEG frames at the line camera's quality 90, see
`preprocess.encode_jpeg`), the realistic label mix of such a set (a share of good parts, the
rest spread evenly over the defects), and the seed ranges other scripts already use, which a
rendered set must not overlap.

A frame's label is a pure function of its seed: it is drawn from a NumPy generator seeded by
`[seed, LABEL_STREAM]`, a stream independent of the one `surfaces.render` draws the scene from
(a generator seeded by the seed alone would tie the label to the part's position).

Usage: `python render_set.py --out DIR --first-seed N --count N [--good-share 0.7] [--workers 2]`.
"""

import argparse
import multiprocessing
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

import preprocess
from defects import DEFECTS, LABELS
from surfaces import render_frame

LABEL_STREAM = 0x1ABE1
"""Second seed word of the generator that picks a frame's label, apart from the scene's stream."""

RESERVED = (
    ("dataset.py train", 0, 9999),
    ("dataset.py validation", 100_000, 101_499),
    ("test set of the first shipped model (1.0.0)", 200_000, 201_999),
    ("dataset.py test", 450_000, 451_999),
    ("dataset.py samples", 300_000, 300_029),
    ("drift fixture", 310_000, 313_999),
)
"""Seed ranges (name, first, last) already used elsewhere; rendered sets use 400000 and above."""

FIRST_FREE_SEED = 400_000
"""Lowest seed a rendered set may use."""


def label_for_seed(seed: int, good_share: float) -> str:
    """The label of the frame rendered from `seed`: good with probability `good_share`, else one
    of the defects with equal probability."""
    u = np.random.default_rng([seed, LABEL_STREAM]).random()
    if u < good_share:
        return LABELS[0]
    index = int((u - good_share) / (1.0 - good_share) * len(DEFECTS))
    return DEFECTS[min(index, len(DEFECTS) - 1)]


def check_seeds(first: int, count: int) -> None:
    """Raises `SystemExit` when seeds `first` .. `first + count - 1` reach a reserved range."""
    last = first + count - 1
    if first < FIRST_FREE_SEED:
        raise SystemExit(f"seeds must be {FIRST_FREE_SEED} or above, got {first}")
    for name, low, high in RESERVED:
        if first <= high and last >= low:
            raise SystemExit(f"seeds {first}-{last} overlap the {name} seeds {low}-{high}")


def frame_path(out: Path, seed: int, label: str) -> Path:
    """Where the frame of `seed` with `label` is written."""
    return out / label / f"s{seed}.jpg"


def write_frame(seed: int, out: Path, good_share: float) -> str:
    """Renders the frame of `seed`, writes it as JPEG (atomically) and returns its label."""
    label = label_for_seed(seed, good_share)
    path = frame_path(out, seed, label)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(preprocess.encode_jpeg(render_frame(seed, label)))
    temporary.replace(path)
    return label


def render_set(out: Path, seeds: range, good_share: float, workers: int) -> dict[str, int]:
    """Writes the frames of `seeds` under `out` with `workers` processes; returns frames per label."""
    for label in LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(LABELS, 0)
    job = partial(write_frame, out=out, good_share=good_share)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for label in pool.imap_unordered(job, seeds, chunksize=4):
            counts[label] += 1
    return counts


def main() -> None:
    """Parses the options, renders the set and reports its label counts and rendering time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="image-folder root to write")
    parser.add_argument("--first-seed", type=int, required=True, help=f"first seed, {FIRST_FREE_SEED} or above")
    parser.add_argument("--count", type=int, required=True, help="number of frames")
    parser.add_argument("--good-share", type=float, default=0.7, help="expected share of good parts")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    args = parser.parse_args()
    if args.count < 1:
        raise SystemExit("--count must be at least 1")
    if not 0.0 <= args.good_share < 1.0:
        raise SystemExit("--good-share must be in [0, 1)")
    check_seeds(args.first_seed, args.count)
    seeds = range(args.first_seed, args.first_seed + args.count)
    began = time.perf_counter()
    counts = render_set(args.out, seeds, args.good_share, max(1, args.workers))
    seconds = time.perf_counter() - began
    print(
        f"wrote {args.count} frames (seeds {seeds.start}-{seeds.stop - 1}) to {args.out}: {counts}; "
        f"{seconds:.1f} s, {seconds / args.count * 1000:.0f} ms per frame with {args.workers} workers",
        flush=True,
    )


if __name__ == "__main__":
    main()
