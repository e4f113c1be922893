"""Trains the surface classifier, selects it on validation, evaluates it on test, exports ONNX.

This module owns the training run: seeding, augmentation of the 8-bit model-input images,
the optimisation schedule (class cross-entropy plus the defect-position loss of the network's
training-only map head, see `model`), model selection by validation loss, the choice of reject thresholds
on validation, the held-out evaluation by the agent's decision rule, and the outputs:
`models/shipped/surface-classifier.onnx` and `models/training/out/metrics.json`.

Usage: `python train.py [--epochs N]`.
"""

import argparse
import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dataset
import export
import metrics
import preprocess
from defects import LABELS
from model import STAGES, SurfaceNet, count_macs

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE.parent / "shipped" / "surface-classifier.onnx"
OUT_DIR = HERE / "out"
SEED = 7
BATCH_SIZE = 32
PEAK_LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-2
MAP_LOSS_WEIGHT = 1.0
MAP_POSITIVE_WEIGHT = 10.0


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and PyTorch and asks PyTorch for deterministic kernels on 2 threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def normalisation_statistics(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of all pixels on the 0-1 scale, rounded to 2 decimals."""
    values = images.astype(np.float64) / 255.0
    return round(float(values.mean()), 2), round(float(values.std()), 2)


def augment(images: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips (boxes follow) and small brightness and contrast changes; images stay 8-bit."""
    n, height, width = images.shape
    out, boxes = images.copy(), boxes.copy()
    has_box = boxes[:, 0] >= 0
    flip_x, flip_y = rng.random(n) < 0.5, rng.random(n) < 0.5
    out[flip_x] = out[flip_x, :, ::-1]
    out[flip_y] = out[flip_y, ::-1, :]
    fx, fy = flip_x & has_box, flip_y & has_box
    boxes[fx, 1], boxes[fx, 3] = width - boxes[fx, 3], width - boxes[fx, 1]
    boxes[fy, 0], boxes[fy, 2] = height - boxes[fy, 2], height - boxes[fy, 0]
    gain = rng.uniform(0.9, 1.1, (n, 1, 1))
    offset = rng.uniform(-8.0, 8.0, (n, 1, 1))
    return np.clip(np.rint(out * gain + offset), 0, 255).astype(np.uint8), boxes


def defect_targets(boxes: np.ndarray, grid: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Per-cell targets (N, 1, rows, cols): 1 where a cell of the grid overlaps the defect box."""
    rows, cols = grid
    cell_h, cell_w = image_size[0] // rows, image_size[1] // cols
    top = np.arange(rows) * cell_h
    left = np.arange(cols) * cell_w
    b = boxes[:, :, None].astype(np.int64)
    in_rows = (top[None, :] < b[:, 2]) & (top[None, :] + cell_h > b[:, 0])
    in_cols = (left[None, :] < b[:, 3]) & (left[None, :] + cell_w > b[:, 1])
    target = in_rows[:, :, None] & in_cols[:, None, :] & (boxes[:, 0] >= 0)[:, None, None]
    return torch.from_numpy(target[:, None].astype(np.float32))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Normalised NCHW float32 tensor of 8-bit images, channels-last in memory."""
    return torch.from_numpy(preprocess.normalise(images)).contiguous(memory_format=torch.channels_last)


def train_epoch(
    model: SurfaceNet,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> float:
    """One pass over the training set (images, labels, boxes) in random order; returns the mean
    classification loss."""
    images, labels, boxes = train
    model.train()
    order = rng.permutation(len(images))
    positive_weight = torch.tensor(MAP_POSITIVE_WEIGHT)
    total = 0.0
    for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
        batch = order[start : start + BATCH_SIZE]
        batch_images, batch_boxes = augment(images[batch], boxes[batch], rng)
        logits, defect_map = model.forward_with_map(to_tensor(batch_images))
        target = defect_targets(batch_boxes, tuple(defect_map.shape[-2:]), batch_images.shape[1:])
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels[batch]))
        map_loss = nn.functional.binary_cross_entropy_with_logits(defect_map, target, pos_weight=positive_weight)
        optimiser.zero_grad(set_to_none=True)
        (loss + MAP_LOSS_WEIGHT * map_loss).backward()
        optimiser.step()
        schedule.step()
        total += loss.item() * len(batch)
    return total / (len(order) // BATCH_SIZE * BATCH_SIZE)


def predict(model: SurfaceNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax scores (N, labels) of 8-bit model-input images."""
    model.eval()
    with torch.no_grad():
        logits = [model(to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.softmax(torch.cat(logits), dim=1).numpy()


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of softmax scores against class indices."""
    return float(-np.log(np.clip(scores[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit(model: SurfaceNet, train: tuple, validation: tuple, epochs: int) -> tuple[SurfaceNet, list[dict], int]:
    """Trains for `epochs` epochs and returns the model of the epoch with the lowest validation loss."""
    images = train[0]
    rng = np.random.default_rng(SEED)
    optimiser = torch.optim.AdamW(model.parameters(), lr=PEAK_LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps = epochs * (len(images) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, PEAK_LEARNING_RATE, total_steps=steps, pct_start=0.15)
    history, best, best_loss, best_epoch = [], None, float("inf"), 0
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        train_loss = train_epoch(model, optimiser, schedule, train, rng)
        scores = predict(model, validation[0])
        val_loss = log_loss(scores, validation[1])
        figures = metrics.evaluate(scores, validation[1], metrics.uniform_thresholds(0.5))
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(train_loss, 4),
                "validation_loss": round(val_loss, 4),
                "validation_accuracy": round(figures["accuracy"], 4),
                "validation_good_vs_defect_accuracy": round(figures["good_vs_defect_accuracy"], 4),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        if val_loss < best_loss:
            best, best_loss, best_epoch = copy.deepcopy(model.state_dict()), val_loss, epoch
    model.load_state_dict(best)
    return model.eval(), history, best_epoch


def main() -> None:
    """Runs the whole training and writes the ONNX model and the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=24)
    args = parser.parse_args()
    seed_everything(SEED)

    train = dataset.load(dataset.TRAIN, with_boxes=True)
    validation, test = dataset.load(dataset.VALIDATION), dataset.load(dataset.TEST)
    measured = normalisation_statistics(train[0])
    if measured != (preprocess.MEAN, preprocess.STD):
        raise SystemExit(f"training images have mean/std {measured}; set preprocess.MEAN and preprocess.STD to them")

    model = SurfaceNet().to(memory_format=torch.channels_last)
    macs = count_macs(model)
    print(f"{macs / 1e6:.1f} M multiply-accumulates per inference", flush=True)
    began = time.perf_counter()
    model, history, best_epoch = fit(model, train, validation, args.epochs)
    training_seconds = time.perf_counter() - began

    val_scores = predict(model, validation[0])
    thresholds = metrics.uniform_thresholds(metrics.choose_threshold(val_scores, validation[1]))
    test_scores = predict(model, test[0])

    export.export_onnx(model, ONNX_PATH)
    difference = export.max_difference_to_torch(model, ONNX_PATH, preprocess.normalise(test[0][:8]))
    if difference > 1e-4:
        raise SystemExit(f"ONNX scores differ from PyTorch by {difference}")

    OUT_DIR.mkdir(exist_ok=True)
    torch.save(model.state_dict(), OUT_DIR / "surface-classifier.pt")
    report = {
        "labels": list(LABELS),
        "data": {split.name: split.describe() for split in dataset.SPLITS},
        "normalisation": {"mean": preprocess.MEAN, "std": preprocess.STD},
        "model": {
            "stages": [list(s) for s in STAGES],
            "multiply_accumulates": macs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "onnx_bytes": ONNX_PATH.stat().st_size,
            "onnx_max_difference_to_torch": difference,
        },
        "training": {
            "seed": SEED,
            "epochs": args.epochs,
            "best_epoch": best_epoch,
            "batch_size": BATCH_SIZE,
            "optimiser": f"AdamW, one-cycle schedule, peak learning rate {PEAK_LEARNING_RATE}, weight decay {WEIGHT_DECAY}",
            "defect_map_loss": f"weight {MAP_LOSS_WEIGHT}, positive weight {MAP_POSITIVE_WEIGHT}",
            "wall_seconds": round(training_seconds, 1),
            "history": history,
        },
        "reject_thresholds": thresholds,
        "validation": metrics.evaluate(val_scores, validation[1], thresholds),
        "test": metrics.evaluate(test_scores, test[1], thresholds),
    }
    (OUT_DIR / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    held_out = report["test"]
    print(
        f"test: {held_out['frames']} frames, good-vs-defect accuracy {held_out['good_vs_defect_accuracy']:.4f}, "
        f"defect recall {held_out['defect_recall']:.4f}, thresholds {thresholds}",
        flush=True,
    )


if __name__ == "__main__":
    main()
