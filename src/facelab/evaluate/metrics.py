"""Classification metrics per task and for the combined 18 classes (macro F1 first)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from facelab.data.labels import CLASS_NAMES, MISSING, NUM_CLASSES, TASK_CLASSES, TASKS, encode_array


def task_metrics(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> dict:
    """Macro F1, accuracy, per-class F1 and confusion matrix over rows with a known label.

    Example:
        >>> m = task_metrics(np.array([0, 1, -1]), np.array([[.9, .1], [.2, .8], [.5, .5]]), 2)
        >>> m["macro_f1"], m["n"]
        (1.0, 2)
    """
    known = y_true != MISSING
    y, pred = y_true[known], probs[known].argmax(1)
    labels = list(range(n_classes))
    if len(y) == 0:
        return {"n": 0}
    return {
        "n": int(len(y)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "per_class_f1": [float(v) for v in f1_score(y, pred, labels=labels, average=None,
                                                    zero_division=0)],
        "support": [int((y == c).sum()) for c in labels],
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def all_metrics(targets: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> dict:
    """Metrics for each task with labels, the 18-class task where all three are known, and
    a summary `score` (mean task macro F1) used for model selection."""
    out: dict = {}
    for task in TASKS:
        m = task_metrics(targets[task], probs[task], TASK_CLASSES[task])
        if m["n"]:
            out[task] = m
    y18 = encode_array(targets["mask"], targets["gender"], targets["age"])
    if (y18 != MISSING).any():
        p18 = (probs["mask"][:, :, None, None] * probs["gender"][:, None, :, None]
               * probs["age"][:, None, None, :]).reshape(len(y18), NUM_CLASSES)
        out["class18"] = task_metrics(y18, p18, NUM_CLASSES)
    scores = [out[t]["macro_f1"] for t in TASKS if t in out]
    out["score"] = float(np.mean(scores)) if scores else 0.0
    return out


def summary_line(metrics: dict) -> str:
    """One line for logs: per-task macro F1 (and accuracy for gender)."""
    parts = []
    for task in (*TASKS, "class18"):
        if task in metrics:
            m = metrics[task]
            parts.append(f"{task} F1 {m['macro_f1']:.3f}" + (
                f" acc {m['accuracy']:.3f}" if task == "gender" else ""))
    return " | ".join(parts) + f" | score {metrics.get('score', 0):.3f}"


def class_names(task: str) -> tuple[str, ...]:
    if task == "class18":
        return tuple(f"{CLASS_NAMES['mask'][c // 6]}/{CLASS_NAMES['gender'][(c // 3) % 2]}/"
                     f"{CLASS_NAMES['age'][c % 3]}" for c in range(NUM_CLASSES))
    return CLASS_NAMES[task]
