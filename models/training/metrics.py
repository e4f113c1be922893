"""The agent's decision rule and the figures that judge a classifier by it.

This module owns turning per-label scores into decisions exactly as `models/MANIFEST.md`
prescribes (a defect class whose score reaches its reject threshold makes the part a reject
candidate; the highest-scoring candidate is the decided class; otherwise the part passes as the
highest-scoring non-defect label), choosing reject thresholds on validation data, and the
evaluation figures: confusion matrix, per-class precision and recall, good-versus-defect
accuracy and defect recall.
"""

import numpy as np

from defects import DEFECTS, LABELS

DEFECT_INDICES = np.array([LABELS.index(d) for d in DEFECTS])
GOOD_INDICES = np.array([i for i, label in enumerate(LABELS) if label not in DEFECTS])


def decide(scores: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Decided class index per row of `scores` (N, labels) under per-defect reject thresholds."""
    limits = np.array([thresholds[d] for d in DEFECTS], dtype=np.float64)
    defect_scores = scores[:, DEFECT_INDICES].astype(np.float64)
    candidate = defect_scores >= limits
    rejected = candidate.any(axis=1)
    best_defect = DEFECT_INDICES[np.argmax(np.where(candidate, defect_scores, -np.inf), axis=1)]
    best_pass = GOOD_INDICES[np.argmax(scores[:, GOOD_INDICES], axis=1)]
    return np.where(rejected, best_defect, best_pass)


def is_defect(classes: np.ndarray) -> np.ndarray:
    """Whether each class index means a reject."""
    return np.isin(classes, DEFECT_INDICES)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, min_recall: float = 0.995) -> float:
    """One reject threshold for every defect class, picked on validation data.

    Among thresholds 0.05, 0.10, ..., 0.95 keeps those whose defect recall reaches `min_recall`
    (all of them when none does), and of those takes the best good-versus-defect accuracy,
    preferring the threshold closest to 0.5 on ties.
    """
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 2)
    rows = []
    for t in candidates:
        figures = evaluate(scores, labels, uniform_thresholds(float(t)))
        rows.append((float(t), figures["defect_recall"], figures["good_vs_defect_accuracy"]))
    eligible = [r for r in rows if r[1] >= min_recall] or rows
    return max(eligible, key=lambda r: (r[2], -abs(r[0] - 0.5)))[0]


def uniform_thresholds(threshold: float) -> dict[str, float]:
    """The same reject threshold for every defect label."""
    return {d: threshold for d in DEFECTS}


def evaluate(scores: np.ndarray, labels: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Decision-rule figures of `scores` (N, labels) against true class indices `labels` (N,)."""
    decided = decide(scores, thresholds)
    n = len(LABELS)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, decided), 1)
    per_class = {}
    for i, label in enumerate(LABELS):
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        per_class[label] = {
            "precision": float(confusion[i, i] / predicted) if predicted else None,
            "recall": float(confusion[i, i] / actual) if actual else None,
            "frames": int(actual),
        }
    truly_defect, rejected = is_defect(labels), is_defect(decided)
    return {
        "frames": int(len(labels)),
        "accuracy": float((decided == labels).mean()),
        "good_vs_defect_accuracy": float((truly_defect == rejected).mean()),
        "defect_recall": float(rejected[truly_defect].mean()),
        "false_reject_rate": float(rejected[~truly_defect].mean()),
        "reject_rate": float(rejected.mean()),
        "per_class": per_class,
        "confusion": {"rows_true_columns_decided": list(LABELS), "counts": confusion.tolist()},
    }
