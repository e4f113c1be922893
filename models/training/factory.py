"""Retrains the surface classifier's architecture on a factory's own labelled image folders.

This module owns the factory retraining loop: reading a decided-only bundle manifest (its labels
define the class indices, its input section the tensor shape), getting the model inputs from the
agent's own decode and preprocessing through `model-bundle tensors` (never from Python image
code, so training sees bit for bit what the agent serves), the deterministic train/validation
split by file path, the starting point (`--init`: a `checkpoint.pt` of an earlier run, or the
network of a bundle such as the model in service), training `model.SurfaceNet` with class
cross-entropy and tensor-space augmentation, selection by validation loss, the checkpoint, the
ONNX export with `export.deployable` at the manifest's fixed input shape, and the
`model-bundle create`, `evaluate` and `card` runs that turn it into a bundle ready to publish.

Usage:
    python factory.py --data DIR [--validation DIR] [--test DIR] --manifest manifest.toml
        --out OUTDIR [--init CHECKPOINT.pt|BUNDLE.dmb] [--epochs N] [--model-bundle PATH]
        [--min-recall 0.99 --max-false-reject 0.02]

DIR, the validation and the test data are image folders (one sub-folder per label, as
`defect-agent capture-export` writes after review) or `file,label` CSV files. Without
`--validation`, a fifth of DIR (by a hash of each file's path relative to DIR) validates.
With a few thousand frames, start from the model in service
(`--init models/shipped/surface-classifier.dmb --learning-rate 5e-4`): class cross-entropy
alone does not teach a network from scratch where the defects are (see README.md).
"""

import argparse
import copy
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn

import export
from model import STAGES, SurfaceNet, count_macs, min_input_side
from train import seed_everything

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEED = 7
BATCH_SIZE = 32
PEAK_LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-2
DEFAULT_EPOCHS = 15
VALIDATION_SHARE = 0.2
"""Share of DIR that validates when no `--validation` is given."""
GOLDEN_PER_LABEL = 2
GAIN_RANGE = (0.9, 1.1)
"""Contrast jitter: factor on the 8-bit pixel values, as `train.augment`."""
OFFSET_RANGE = (-8.0, 8.0)
"""Brightness jitter: offset in 8-bit pixel levels, as `train.augment`."""
ONNX_TOLERANCE = 1e-4
"""Largest allowed score difference between the exported graph and PyTorch."""
PUBLISH_REPOSITORY = "/srv/defect-updates"


@dataclass(frozen=True)
class Spec:
    """What training needs from a bundle manifest."""

    name: str
    model_version: int
    labels: list[str]
    defects: list[str]
    shape: list[int]
    layout: str
    input_name: str
    output_name: str
    kind: str
    scale: float
    mean: np.ndarray
    std: np.ndarray

    @property
    def channels(self) -> int:
        """Colour channels of the model input."""
        return self.shape[1] if self.layout == "nchw" else self.shape[3]

    @property
    def nchw(self) -> tuple[int, int, int, int]:
        """The input shape (1, C, H, W) the network is built for."""
        if self.layout == "nchw":
            return tuple(self.shape)
        n, h, w, c = self.shape
        return n, c, h, w

    @property
    def bundle_name(self) -> str:
        """File name of the bundle: `<name>-<model_version>.dmb`."""
        return f"{self.name}-{self.model_version}.dmb"


@dataclass
class Tensors:
    """Model inputs (NCHW float32, memory-mapped when possible), label indices and source files."""

    inputs: np.ndarray
    labels: np.ndarray
    files: list[str]


def read_manifest(path: Path) -> Spec:
    """Reads the fields training needs from a bundle manifest (TOML) and checks they are usable."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SystemExit(f"factory: cannot read the manifest {path}: {err}") from err
    try:
        source, pre, out = data["input"], data["preprocess"], data["output"]
        spec = Spec(
            name=data["name"],
            model_version=int(data["model_version"]),
            labels=list(out["labels"]),
            defects=list(out["defects"]),
            shape=[int(d) for d in source["shape"]],
            layout=source.get("layout", "nchw"),
            input_name=source.get("tensor", export.INPUT_NAME),
            output_name=out.get("tensor", export.OUTPUT_NAME),
            kind=out.get("kind", "probabilities"),
            scale=float(pre["scale"]),
            mean=np.asarray(pre["mean"], np.float32),
            std=np.asarray(pre["std"], np.float32),
        )
    except KeyError as err:
        raise SystemExit(f"factory: {path}: the manifest has no {err.args[0]!r} field (see models/MANIFEST.md)") from err
    if "tiles" in pre:
        raise SystemExit(f"factory: {path}: [preprocess] tiles is set; training on tiled inputs is not supported")
    if len(spec.shape) != 4 or spec.shape[0] != 1 or spec.layout not in ("nchw", "nhwc"):
        raise SystemExit(f"factory: {path}: [input] shape {spec.shape} layout {spec.layout!r}: expected [1, C, H, W] nchw or [1, H, W, C] nhwc")
    if spec.kind not in ("probabilities", "logits"):
        raise SystemExit(f"factory: {path}: [output] kind {spec.kind!r} must be probabilities or logits")
    unknown = [d for d in spec.defects if d not in spec.labels]
    if unknown or len(set(spec.labels)) != len(spec.labels) or len(spec.labels) < 2:
        raise SystemExit(f"factory: {path}: [output] labels {spec.labels} must be distinct (at least two) and hold every defect {spec.defects}")
    return spec


def find_model_bundle(given: Path | None) -> Path:
    """The `model-bundle` binary: `given`, else on PATH, else the repository's release or debug build."""
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"factory: --model-bundle {given} is not a file")
        return given
    on_path = shutil.which("model-bundle")
    candidates = [Path(on_path)] if on_path else []
    candidates += [REPO / "target" / "release" / "model-bundle", REPO / "target" / "debug" / "model-bundle"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit(
        "factory: no model-bundle binary found on PATH or in target/release or target/debug; "
        "build it with `cargo build --release -p defect-models --bin model-bundle` or pass --model-bundle PATH"
    )


def run_tool(command: list[str], allowed: tuple[int, ...] = (0,)) -> int:
    """Runs a command with its output shown; exits with its message unless its status is in `allowed`."""
    print(f"$ {shlex.join(command)}", flush=True)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        tail = (tail + [line.rstrip()])[-20:]
    status = process.wait()
    if status not in allowed:
        message = "\n".join(tail) or "(no message)"
        raise SystemExit(f"factory: {Path(command[0]).name} {command[1]} failed with exit status {status}:\n{message}")
    return status


def tool_output(command: list[str]) -> str:
    """Standard output of a command that must succeed; exits with its message otherwise."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"factory: {shlex.join(command)} failed with exit status {result.returncode}:\n{result.stderr.strip()}")
    return result.stdout


def make_tensors(tool: Path, manifest: Path, data: Path, out: Path, spec: Spec, decode: list[str]) -> Tensors:
    """Inputs of every frame of `data` as the agent makes them (`model-bundle tensors`, with the
    `decode` options), memory-mapped."""
    run_tool([str(tool), "tensors", "--manifest", str(manifest), str(data), "--out", str(out), *decode])
    names = json.loads((out / "labels.json").read_text())
    if list(names) != spec.labels:
        raise SystemExit(f"factory: {out / 'labels.json'} holds labels {names}, the manifest {spec.labels}")
    inputs = np.load(out / "inputs.npy", mmap_mode="r")
    labels = np.load(out / "labels.npy")
    files = (out / "files.txt").read_text().splitlines()
    if inputs.shape[1:] != tuple(spec.shape[1:]) or inputs.dtype != np.float32:
        raise SystemExit(f"factory: {out / 'inputs.npy'} is {inputs.dtype} {inputs.shape}, expected float32 (N, {spec.shape[1:]})")
    if not len(inputs) == len(labels) == len(files):
        raise SystemExit(f"factory: {out} holds {len(inputs)} inputs, {len(labels)} labels and {len(files)} files")
    if spec.layout == "nhwc":
        inputs = inputs.transpose(0, 3, 1, 2)
    return Tensors(inputs, labels.astype(np.int64), files)


def labelled_only(tensors: Tensors, what: str) -> np.ndarray:
    """Indices of the frames that carry a label; says how many were left out for having none."""
    keep = np.flatnonzero(tensors.labels >= 0)
    if len(keep) < len(tensors.labels):
        print(f"{what}: {len(tensors.labels) - len(keep)} unlabelled frame(s) left out", flush=True)
    return keep


def relative_name(file: str, data: Path) -> str:
    """A frame's path relative to the data set's root (the folder, or a CSV file's folder), with `/`."""
    root = data if data.is_dir() else data.parent
    return Path(os.path.relpath(os.path.abspath(file), os.path.abspath(root))).as_posix()


def is_validation(name: str, share: float = VALIDATION_SHARE) -> bool:
    """Whether the frame with relative path `name` validates: a hash of the path, not chance."""
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return value / 2**64 < share


def link_split(folder: Path, names: list[str], files: list[str], labels: list[str]) -> None:
    """Makes `folder` an image folder of symbolic links, `<label>/<name>` to each file (a name's
    `/` become `__`), so that `model-bundle create` reads the split like any labelled folder, and
    golden samples and reports keep the frames' own names."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, file, label in zip(names, files, labels):
        link = folder / label / name.removeprefix(f"{label}/").replace("/", "__")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.abspath(file))


def fingerprint(names: list[str], files: list[str], labels: list[str]) -> str:
    """SHA-256 over each image's name, label and content digest, in sorted order: the data
    fingerprint `model-bundle create` records for validation data (`models/MANIFEST.md`)."""
    lines = sorted(
        f"{name}\t{label}\t{hashlib.sha256(Path(file).read_bytes()).hexdigest()}\n"
        for name, file, label in zip(names, files, labels)
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def source_revision() -> str | None:
    """The repository's commit, with `+dirty` when the training code has uncommitted changes; None outside git."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(HERE), *arguments], capture_output=True, text=True, check=True).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        return revision + ("+dirty" if git("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def bundle_manifest(manifest: Path, out: Path, provenance: dict[str, str]) -> Path:
    """The manifest to create the bundle from: `manifest` itself when it states a provenance or
    names golden files (relative to it), else a copy in `out` with `provenance` added."""
    text = manifest.read_text()
    data = tomllib.loads(text)
    if "provenance" in data or data.get("validation", {}).get("golden"):
        return manifest
    lines = ["", "[provenance]"] + [f"{key} = {json.dumps(value)}" for key, value in provenance.items()]
    derived = out / "manifest.toml"
    derived.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    tomllib.loads(derived.read_text())
    return derived


def build_model(stages: tuple[tuple[int, ...], ...], classes: int, channels: int) -> SurfaceNet:
    """A SurfaceNet for `classes` labels whose first convolution takes `channels` input channels.

    `stages` are (output channels, kernel, stride, padding); the (output channels, stride) pairs
    that checkpoints of the first architecture saved mean a padded 3x3 convolution. The network
    pools globally, so any input height and width work; only the channel count of its first layer
    depends on the input.
    """
    full = tuple(tuple(s) if len(s) == 4 else (s[0], 3, s[1], 1) for s in stages)
    return SurfaceNet(full, classes=classes, channels=channels)


def load_checkpoint(path: Path, spec: Spec) -> tuple[SurfaceNet, dict]:
    """The model to start from: a checkpoint saved by an earlier run, or the network of a bundle
    (`.dmb`, such as the model in service) whose graph is a SurfaceNet export. Refused when its
    labels or input channels differ from the manifest's."""
    if path.suffix == ".dmb":
        return load_bundle_network(path, spec)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    check_compatible(path, list(saved["labels"]), saved["channels"], spec)
    stages = tuple(tuple(s) for s in saved["stages"])
    model = build_model(stages, len(spec.labels), spec.channels)
    model.load_state_dict(saved["state_dict"])
    return model, saved


def check_compatible(path: Path, labels: list[str], channels: int, spec: Spec) -> None:
    """Exits with a clear message unless a starting model has the manifest's labels (in order) and input channels."""
    if labels != spec.labels:
        raise SystemExit(
            f"factory: --init {path} was trained for labels {labels}, but the manifest has "
            f"{spec.labels}; the class indices must match (same labels, same order) to continue training"
        )
    if channels != spec.channels:
        raise SystemExit(f"factory: --init {path} takes {channels} input channel(s), the manifest {spec.channels}")


def load_bundle_network(path: Path, spec: Spec) -> tuple[SurfaceNet, dict]:
    """The SurfaceNet in a bundle's `model.onnx` (BatchNorm folded, see `export.deployable`), with
    identity BatchNorm layers until `calibrate_batchnorm` sets them from data."""
    with tarfile.open(path) as bundle:
        manifest = json.load(bundle.extractfile("manifest.json"))
        graph = onnx.load_from_string(bundle.extractfile("model.onnx").read()).graph
    check_compatible(path, list(manifest["output"]["labels"]), manifest_channels(manifest["input"]), spec)
    weights = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy()) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    def attribute(node, name: str, default: list[int]) -> list[int]:
        return next((list(a.ints) for a in node.attribute if a.name == name), default)

    stages = tuple(
        (
            int(weights[n.input[1]].shape[0]),
            int(weights[n.input[1]].shape[-1]),
            int(attribute(n, "strides", [1, 1])[0]),
            int(attribute(n, "pads", [0, 0, 0, 0])[0]),
        )
        for n in convs
    )
    model = build_model(stages, len(spec.labels), spec.channels)
    layers = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    try:
        if len(gemms) != 1 or any(len(n.input) != 3 for n in convs):
            raise ValueError("expected convolutions with bias and one Gemm")
        for conv, norm, node in zip(layers, norms, convs, strict=True):
            conv.weight.data.copy_(weights[node.input[1]])
            norm.weight.data.fill_(1.0)
            norm.bias.data.copy_(weights[node.input[2]])
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        model.classifier.weight.data.copy_(weights[gemms[0].input[1]])
        model.classifier.bias.data.copy_(weights[gemms[0].input[2]])
    except (ValueError, RuntimeError, KeyError) as err:
        raise SystemExit(f"factory: --init {path}: its model is not a SurfaceNet exported by export.py ({err})") from err
    return model, {"labels": spec.labels, "stages": [list(s) for s in stages], "epoch": None, "bundle": manifest["name"]}


def manifest_channels(source: dict) -> int:
    """Input channels of a manifest's `[input]` section."""
    return int(source["shape"][1] if source.get("layout", "nchw") == "nchw" else source["shape"][3])


def calibrate_batchnorm(model: SurfaceNet, data: Tensors, indices: np.ndarray, frames: int = 256) -> None:
    """Turns the identity BatchNorm layers of a network read from a bundle into ones that compute
    the same function in evaluation mode and behave like trained ones in training mode: each
    convolution's output mean and standard deviation over `frames` training frames become the
    layer's running statistics, its scale and (added to the folded bias) its shift."""
    sample = indices[:frames]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    moments: dict[int, list[torch.Tensor]] = {}
    hooks = [
        conv.register_forward_hook(lambda _m, _i, out, k=k: moments.setdefault(k, []).append(
            torch.stack([out.mean(dim=(0, 2, 3)), (out * out).mean(dim=(0, 2, 3))])))
        for k, conv in enumerate(m for m in model.features if isinstance(m, nn.Conv2d))
    ]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(sample), 32):
            model(to_tensor(np.asarray(data.inputs[sample[start : start + 32]])))
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for k, norm in enumerate(norms):
            mean, square = torch.stack(moments[k]).mean(dim=0)
            std = torch.sqrt(torch.clamp(square - mean * mean, min=0.0) + norm.eps)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(std * std - norm.eps)
            norm.weight.copy_(std)
            norm.bias.add_(mean)


def jitter(batch: np.ndarray, spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal and vertical flips and small brightness and contrast changes of
    normalised inputs (N, C, H, W).

    The jitter is `train.augment`'s on the 8-bit pixels p -> clip(g p + o, 0, 255), written in
    normalised units: x -> g x + ((g - 1) mean + o scale) / std, clipped to the range 0-255 maps to.
    """
    n, c = batch.shape[:2]
    flip_x, flip_y = rng.random(n) < 0.5, rng.random(n) < 0.5
    out = batch.copy()
    out[flip_x] = out[flip_x][..., ::-1]
    out[flip_y] = out[flip_y][..., ::-1, :]
    gain = rng.uniform(*GAIN_RANGE, (n, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(*OFFSET_RANGE, (n, 1, 1, 1)).astype(np.float32)
    mean = np.broadcast_to(spec.mean, (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(spec.std, (c,)).reshape(1, c, 1, 1)
    shift = ((gain - 1.0) * mean + offset * np.float32(spec.scale)) / std
    low, high = (0.0 - mean) / std, (255.0 * np.float32(spec.scale) - mean) / std
    return np.clip(out * gain + shift, low, high).astype(np.float32)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """A float32 NCHW torch tensor of a batch, channels-last in memory."""
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).contiguous(memory_format=torch.channels_last)


def train_epoch(
    model: SurfaceNet,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    data: Tensors,
    indices: np.ndarray,
    spec: Spec,
    rng: np.random.Generator,
    class_weights: torch.Tensor,
) -> float:
    """One pass over the training frames in random order (class cross-entropy with `class_weights`
    only; the network's defect-map head stays unused); returns the mean loss."""
    model.train()
    order = rng.permutation(indices)
    total = 0.0
    for start in range(0, len(order), BATCH_SIZE):
        batch = np.sort(order[start : start + BATCH_SIZE])
        if len(batch) < 2:
            continue
        logits = model(to_tensor(jitter(np.asarray(data.inputs[batch]), spec, rng)))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(data.labels[batch]), weight=class_weights)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        total += loss.item() * len(batch)
    return total / len(order)


def predict(model: nn.Module, data: Tensors, indices: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax scores (N, labels) of the frames at `indices`."""
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            scores.append(torch.softmax(model(to_tensor(np.asarray(data.inputs[batch]))), dim=1).numpy())
    return np.concatenate(scores) if scores else np.zeros((0, model.classifier.out_features), np.float32)


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of softmax scores against class indices."""
    return float(-np.log(np.clip(scores[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def decide(scores: np.ndarray, spec: Spec, thresholds: dict[str, float]) -> np.ndarray:
    """Decided class index per row under the agent's rule (`models/MANIFEST.md`, "Decision rule")."""
    defect_idx = np.array([spec.labels.index(d) for d in spec.defects], dtype=np.int64)
    pass_idx = np.array([i for i, label in enumerate(spec.labels) if label not in spec.defects], dtype=np.int64)
    limits = np.array([thresholds[d] for d in spec.defects], dtype=np.float64)
    defect_scores = scores[:, defect_idx].astype(np.float64)
    candidate = defect_scores >= limits
    best_defect = defect_idx[np.argmax(np.where(candidate, defect_scores, -np.inf), axis=1)]
    if len(pass_idx) == 0:
        return best_defect
    best_pass = pass_idx[np.argmax(scores[:, pass_idx], axis=1)]
    return np.where(candidate.any(axis=1), best_defect, best_pass)


def figures(scores: np.ndarray, labels: np.ndarray, spec: Spec, thresholds: dict[str, float]) -> dict:
    """Accuracy, defect recall, false reject rate, per-class figures and confusion matrix of scores."""
    decided = decide(scores, spec, thresholds)
    n = len(spec.labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, decided), 1)
    defect_idx = [spec.labels.index(d) for d in spec.defects]
    truly, rejected = np.isin(labels, defect_idx), np.isin(decided, defect_idx)

    def share(mask: np.ndarray) -> float | None:
        return float(mask.mean()) if len(mask) else None

    per_class = {}
    for i, label in enumerate(spec.labels):
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[label] = {
            "precision": float(confusion[i, i] / predicted) if predicted else None,
            "recall": float(confusion[i, i] / actual) if actual else None,
            "frames": actual,
        }
    return {
        "frames": int(len(labels)),
        "accuracy": share(decided == labels),
        "good_vs_defect_accuracy": share(truly == rejected),
        "defect_recall": share(rejected[truly]),
        "false_reject_rate": share(rejected[~truly]),
        "per_class": per_class,
        "confusion": {"rows_true_columns_decided": spec.labels, "counts": confusion.tolist()},
    }


def class_weights(labels: np.ndarray, classes: int, balance: bool) -> torch.Tensor:
    """Cross-entropy weight per class: with `balance`, inversely proportional to the class's share
    of the training frames (a class absent from them gets 1), so that a set of mostly good parts
    does not teach the network to call everything good; otherwise all 1."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.ones(classes)
    if balance:
        present = counts > 0
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def fit(
    model: SurfaceNet,
    data: Tensors,
    train_idx: np.ndarray,
    validation: Tensors,
    val_idx: np.ndarray,
    spec: Spec,
    epochs: int,
    learning_rate: float,
    balance: bool,
) -> tuple[SurfaceNet, list[dict], int]:
    """Trains for `epochs` epochs (AdamW, one-cycle schedule) and returns the model of the epoch
    with the lowest (unweighted) validation loss, the per-epoch history and that epoch. With
    `balance`, the training loss weighs every class alike (see `class_weights`)."""
    rng = np.random.default_rng(SEED)
    weights = class_weights(data.labels[train_idx], len(spec.labels), balance)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=WEIGHT_DECAY)
    steps = epochs * len(range(0, len(train_idx), BATCH_SIZE))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps, pct_start=0.15)
    val_labels = validation.labels[val_idx]
    half = {d: 0.5 for d in spec.defects}
    history: list[dict] = []
    best, best_loss, best_epoch = copy.deepcopy(model.state_dict()), float("inf"), 0
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        train_loss = train_epoch(model, optimiser, schedule, data, train_idx, spec, rng, weights)
        scores = predict(model, validation, val_idx)
        val_loss = log_loss(scores, val_labels)
        at_half = figures(scores, val_labels, spec, half)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 4),
                "validation_loss": round(val_loss, 4),
                "validation_accuracy": round(at_half["accuracy"], 4),
                "validation_defect_recall_at_0.5": _rounded(at_half["defect_recall"]),
                "validation_false_reject_rate_at_0.5": _rounded(at_half["false_reject_rate"]),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        if val_loss < best_loss:
            best, best_loss, best_epoch = copy.deepcopy(model.state_dict()), val_loss, epoch
    model.load_state_dict(best)
    return model.eval(), history, best_epoch


def _rounded(value: float | None) -> float | None:
    """`value` rounded to 4 decimals, or None."""
    return None if value is None else round(value, 4)


class _FromNhwc(nn.Module):
    """Takes an NHWC input and hands it on as NCHW."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner module's output on the NCHW view of `x`."""
        return self.inner(x.permute(0, 3, 1, 2))


def export_model(model: SurfaceNet, path: Path, spec: Spec) -> nn.Module:
    """Writes the deployable graph (BatchNorm folded, softmax unless the manifest wants logits) with
    the manifest's fixed input shape, layout and tensor names; checks it; returns the exported module."""
    deployed = export.deployable(model)
    if spec.kind == "logits":
        deployed = deployed.classifier
    if spec.layout == "nhwc":
        deployed = _FromNhwc(deployed)
    deployed = deployed.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        deployed,
        (torch.zeros(spec.shape),),
        str(path),
        input_names=[spec.input_name],
        output_names=[spec.output_name],
        opset_version=export.OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {node.op_type for node in graph.graph.node}
    if "BatchNormalization" in ops or (spec.kind == "probabilities" and "Softmax" not in ops):
        raise SystemExit(f"factory: unexpected operators in the exported graph: {sorted(ops)}")

    def shape_of(value: onnx.ValueInfoProto) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: shape_of(v) for v in graph.graph.input}
    outputs = {v.name: shape_of(v) for v in graph.graph.output}
    if inputs != {spec.input_name: spec.shape} or outputs != {spec.output_name: [1, len(spec.labels)]}:
        raise SystemExit(f"factory: exported graph has inputs {inputs} and outputs {outputs}")
    return deployed


def onnx_difference(deployed: nn.Module, path: Path, data: Tensors, indices: np.ndarray, spec: Spec) -> float:
    """Largest absolute output difference between the ONNX file (onnxruntime) and PyTorch on the frames at `indices`."""
    session = export.onnx_session(path)
    worst = 0.0
    for i in indices:
        x = np.array(data.inputs[i : i + 1], dtype=np.float32)
        if spec.layout == "nhwc":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        with torch.no_grad():
            expected = deployed(torch.from_numpy(x)).numpy()
        got = session.run([spec.output_name], {spec.input_name: x})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def label_counts(labels: np.ndarray, spec: Spec) -> dict[str, int]:
    """Frames per label."""
    counts = np.bincount(labels, minlength=len(spec.labels))
    return {label: int(counts[i]) for i, label in enumerate(spec.labels)}


def bundle_thresholds(tool: Path, bundle: Path, spec: Spec) -> dict[str, float]:
    """The reject thresholds `model-bundle create` wrote into the bundle's manifest."""
    manifest = json.loads(tool_output([str(tool), "inspect", str(bundle), "--json"]))
    thresholds = manifest["output"]["reject_threshold"]
    return {d: float(thresholds[d]) for d in spec.defects}


def print_figures(name: str, result: dict) -> None:
    """Prints the headline figures and the confusion matrix of one evaluation."""

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    print(
        f"{name}: {result['frames']} frames, accuracy {percent(result['accuracy'])}, defect recall "
        f"{percent(result['defect_recall'])}, false reject rate {percent(result['false_reject_rate'])}",
        flush=True,
    )
    labels = result["confusion"]["rows_true_columns_decided"]
    width = max(len(label) for label in labels) + 1
    print("  true \\ decided " + "".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, result["confusion"]["counts"]):
        print(f"  {label:<15}" + "".join(f"{count:>{width}}" for count in row))


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training frames: image folder or file,label CSV")
    parser.add_argument("--validation", type=Path, help="validation frames; default: a fifth of --data, by file path")
    parser.add_argument("--test", type=Path, help="held-out frames for model-bundle evaluate")
    parser.add_argument("--manifest", type=Path, required=True, help="decided-only bundle manifest (TOML)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--init", type=Path, help="continue from a checkpoint.pt this script saved, or start from a bundle's (.dmb) SurfaceNet")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--learning-rate", type=float, default=PEAK_LEARNING_RATE, help="peak of the one-cycle schedule")
    parser.add_argument("--full-decode", action="store_true", help="decode JPEGs at full size everywhere (for agents run with dct_scaling = false)")
    parser.add_argument("--no-balance", action="store_true", help="weigh every training frame alike instead of every class")
    parser.add_argument("--model-bundle", type=Path, help="the model-bundle binary")
    parser.add_argument("--min-recall", type=float, help="evaluate gate: lowest defect recall on --test")
    parser.add_argument("--max-false-reject", type=float, help="evaluate gate: highest false reject rate on --test")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if (args.min_recall is not None or args.max_false_reject is not None) and args.test is None:
        parser.error("--min-recall and --max-false-reject are gates on --test; give --test")
    for option in ("data", "validation", "test", "manifest", "init"):
        path = getattr(args, option)
        if path is not None and not path.exists():
            parser.error(f"--{option} {path} does not exist")
    return args


def main() -> None:
    """Makes the tensors, trains, exports, bundles, evaluates and prints the publish command."""
    args = parse_args()
    spec = read_manifest(args.manifest)
    tool = find_model_bundle(args.model_bundle)
    decode = ["--full-decode"] if args.full_decode else []
    seed_everything(SEED)
    if args.init is not None:
        model, saved = load_checkpoint(args.init, spec)
        print(f"starting from {args.init} ({'its network' if saved.get('epoch') is None else 'epoch ' + str(saved['epoch']) + ' of its run'})", flush=True)
    else:
        model = build_model(STAGES, len(spec.labels), spec.channels)
    smallest = min_input_side(tuple(
        (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in model.features if isinstance(m, nn.Conv2d)
    ))
    if min(spec.nchw[2:]) < smallest:
        raise SystemExit(
            f"factory: {args.manifest}: the input {spec.nchw[3]}x{spec.nchw[2]} is too small for this network, "
            f"which needs at least {smallest}x{smallest} pixels; make [input] shape larger"
        )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    data = make_tensors(tool, args.manifest, args.data, out / "tensors" / "data", spec, decode)
    labelled = labelled_only(data, str(args.data))
    names = [relative_name(f, args.data) for f in data.files]
    if args.validation is not None:
        validation_data = args.validation
        validation = make_tensors(tool, args.manifest, args.validation, out / "tensors" / "validation", spec, decode)
        train_idx, val_idx = labelled, labelled_only(validation, str(args.validation))
    else:
        in_validation = np.array([is_validation(name) for name in names], dtype=bool)
        train_idx, val_idx = labelled[~in_validation[labelled]], labelled[in_validation[labelled]]
        validation, validation_data = data, out / "split" / "validation"
        link_split(validation_data, [names[i] for i in val_idx], [data.files[i] for i in val_idx], [spec.labels[data.labels[i]] for i in val_idx])
    tensor_seconds = time.perf_counter() - began
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise SystemExit(f"factory: {len(train_idx)} labelled training and {len(val_idx)} validation frames; both sets need frames")
    counts = {"train": label_counts(data.labels[train_idx], spec), "validation": label_counts(validation.labels[val_idx], spec)}
    print(f"tensors in {tensor_seconds:.0f} s; frames per label: {json.dumps(counts)}", flush=True)

    if args.init is not None and args.init.suffix == ".dmb":
        calibrate_batchnorm(model, data, train_idx)
    model = model.to(memory_format=torch.channels_last)
    macs = count_macs(model, spec.nchw)
    print(f"{macs / 1e6:.1f} M multiply-accumulates per inference at input {spec.nchw}", flush=True)
    began = time.perf_counter()
    balance = not args.no_balance
    model, history, best_epoch = fit(model, data, train_idx, validation, val_idx, spec, args.epochs, args.learning_rate, balance)
    training_seconds = time.perf_counter() - began
    stages = [
        [m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]] for m in model.features if isinstance(m, nn.Conv2d)
    ]
    torch.save(
        {
            "state_dict": model.state_dict(),
            "labels": spec.labels,
            "stages": stages,
            "channels": spec.channels,
            "input_shape": spec.shape,
            "layout": spec.layout,
            "epoch": best_epoch,
            "manifest": {"name": spec.name, "model_version": spec.model_version},
        },
        out / "checkpoint.pt",
    )

    onnx_path = out / "model.onnx"
    deployed = export_model(model, onnx_path, spec)
    difference = onnx_difference(deployed, onnx_path, validation, val_idx[:8], spec)
    if difference > ONNX_TOLERANCE:
        raise SystemExit(f"factory: ONNX output differs from PyTorch by {difference}")
    print(f"wrote {out / 'checkpoint.pt'} (best epoch {best_epoch}) and {onnx_path} (max difference to PyTorch {difference:.2e})", flush=True)

    train_fingerprint = fingerprint([names[i] for i in train_idx], [data.files[i] for i in train_idx], [spec.labels[data.labels[i]] for i in train_idx])
    provenance = {
        "dataset": f"training frames {args.data} ({len(train_idx)} labelled frames: {json.dumps(counts['train'])}, fingerprint sha256 "
        f"{train_fingerprint}); validation frames {validation_data} ({len(val_idx)} frames)",
        "training_script": "models/training/factory.py",
        "notes": f"{'continued from ' + str(args.init) if args.init else 'trained from scratch'}, seed {SEED}, "
        f"best validation loss at epoch {best_epoch} of {args.epochs}; inputs from model-bundle tensors{' --full-decode' if decode else ''}",
    }
    revision = source_revision()
    if revision:
        provenance["source_revision"] = revision
    manifest = bundle_manifest(args.manifest, out, provenance)
    bundle = out / spec.bundle_name
    golden = ["--golden", str(validation_data)] if validation_data.is_dir() else []
    run_tool(
        [str(tool), "create", "--manifest", str(manifest), "--onnx", str(onnx_path), *golden,
         "--golden-per-label", str(GOLDEN_PER_LABEL), "--validation", str(validation_data), *decode, "--out", str(bundle)]
    )
    thresholds = bundle_thresholds(tool, bundle, spec)
    report = {
        "manifest": str(manifest),
        "labels": spec.labels,
        "data": {"train": str(args.data), "validation": str(validation_data), "test": None if args.test is None else str(args.test)},
        "frames_per_label": counts,
        "provenance": provenance,
        "model": {"stages": stages, "multiply_accumulates": macs, "parameters": sum(p.numel() for p in model.parameters()),
                  "init": None if args.init is None else str(args.init), "onnx_max_difference_to_torch": difference},
        "training": {"seed": SEED, "epochs": args.epochs, "best_epoch": best_epoch, "batch_size": BATCH_SIZE,
                     "optimiser": f"AdamW, one-cycle schedule, peak learning rate {args.learning_rate}, weight decay {WEIGHT_DECAY}",
                     "class_weights": [round(w, 4) for w in class_weights(data.labels[train_idx], len(spec.labels), balance).tolist()],
                     "tensor_seconds": round(tensor_seconds, 1), "wall_seconds": round(training_seconds, 1), "history": history},
        "reject_thresholds": thresholds,
        "train": figures(predict(model, data, train_idx), data.labels[train_idx], spec, thresholds),
        "validation": figures(predict(model, validation, val_idx), validation.labels[val_idx], spec, thresholds),
    }
    print(f"reject thresholds from model-bundle create: {thresholds}")
    print_figures("train (PyTorch)", report["train"])
    print_figures("validation (PyTorch)", report["validation"])

    gates_met = True
    card = [str(tool), "card", str(bundle), "--out", str(out / "model-card.md")]
    if args.test is not None:
        evaluation = out / "evaluation.json"
        command = [str(tool), "evaluate", str(bundle), str(args.test), "--json", "--out", str(evaluation), *decode]
        if args.min_recall is not None:
            command += ["--min-recall", str(args.min_recall)]
        if args.max_false_reject is not None:
            command += ["--max-false-reject", str(args.max_false_reject)]
        gates_met = run_tool(command, allowed=(0, 1)) == 0
        report["test_evaluation"] = json.loads(evaluation.read_text())
        card[3:3] = ["--evaluation", str(evaluation)]
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    run_tool(card)
    if not gates_met:
        raise SystemExit(f"factory: {bundle} does not meet the gates on {args.test} (see {out / 'evaluation.json'}); not publishing it")
    print("\nTo publish (lines and stations of your plant):")
    print(f"defect-central repo add-target --repo {PUBLISH_REPOSITORY} --keys keys/ --bundle {bundle} --lines <line> --stations <stations>")


if __name__ == "__main__":
    main()
