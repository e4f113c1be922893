"""Reading the model-input tensors that `model-bundle tensors` writes, with NumPy only.

This module owns the training side of train/serve parity: training never decodes, resizes or
normalises an image itself. `model-bundle tensors` runs every frame through the agent's own
decode and preprocessing (the Rust code that feeds tract on the line) and writes
`inputs.npy` (float32, the model's input layout), `labels.npy` (int64 label index, -1 when
unlabelled), `files.txt` and `labels.json`; this module loads them, memory-mapped.

Run as a script to print the shape and each frame's SHA-256 as JSON (the parity test's probe):
`python tensors_io.py DIR`.
"""

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Tensors:
    """The tensors of one data set, in the order `model-bundle tensors` wrote them."""

    inputs: np.ndarray
    """Model inputs, float32, (N, C, H, W) or (N, H, W, C); memory-mapped."""
    labels: np.ndarray
    """Label index per frame in `label_names` order; -1 for an unlabelled frame."""
    files: list[str]
    """The image each row came from."""
    label_names: list[str]
    """The manifest's labels."""


def load(directory: str | Path) -> Tensors:
    """Loads the four files `model-bundle tensors --out DIRECTORY` wrote."""
    folder = Path(directory)
    inputs = np.load(folder / "inputs.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    files = (folder / "files.txt").read_text().splitlines()
    label_names = json.loads((folder / "labels.json").read_text())
    if inputs.dtype != np.float32 or len(labels) != len(inputs) or len(files) != len(inputs):
        raise ValueError(
            f"{folder}: inputs {inputs.dtype} {inputs.shape}, {len(labels)} labels and {len(files)} files do not match"
        )
    return Tensors(inputs=inputs, labels=labels, files=files, label_names=label_names)


def row_digests(tensors: Tensors) -> list[str]:
    """SHA-256 of each frame's tensor as little-endian float32 in C order."""
    rows = np.ascontiguousarray(tensors.inputs, dtype="<f4")
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


def main() -> None:
    """Prints the shape, labels, files and per-frame digests of a tensor folder as JSON."""
    tensors = load(sys.argv[1])
    print(
        json.dumps(
            {
                "shape": list(tensors.inputs.shape),
                "labels": tensors.labels.tolist(),
                "files": tensors.files,
                "sha256": row_digests(tensors),
            }
        )
    )


if __name__ == "__main__":
    main()
