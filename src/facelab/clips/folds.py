"""Grouped folds and bootstrap intervals for clip evaluation.

Folds are assigned per data set and then merged by index: GMDCSA24's groups are its
subjects (k = 4 gives leave-one-subject-out), UP-Fall's are trials (`event`), assigned by
StratifiedGroupKFold so each fold holds a mix of classes. A group is never on both sides.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedGroupKFold

from facelab.errors import ConfigError, LeakageError


def assign_folds(table: pd.DataFrame, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per row; all rows of a `group` share a fold, per data set.

    Example:
        >>> t = pd.DataFrame({"label": list("abab"), "group": list("xxyy"), "event": list("pqrs"), "dataset": "d"})
        >>> f = assign_folds(t, 2); bool(f[0] == f[1] and f[2] == f[3] and f[0] != f[2])
        True
    """
    if k < 2:
        raise ConfigError(f"folds={k}: need at least 2")
    folds = np.full(len(table), -1)
    for _, part in table.groupby("dataset", sort=True):
        groups = part["group"].to_numpy()
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise ConfigError(f"data set {part['dataset'].iloc[0]!r} has {n_groups} groups, "
                              f"fewer than folds={k}")
        if n_groups == k:  # one group per fold: leave-one-group-out in sorted group order
            order = {g: i for i, g in enumerate(sorted(np.unique(groups)))}
            folds[part.index] = [order[g] for g in groups]
            continue
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(part)), part["label"], groups)):
            folds[part.index[test]] = i
    check_folds(table, folds)
    return folds


def check_folds(table: pd.DataFrame, folds: np.ndarray) -> None:
    """Raise LeakageError if any group (or event) has rows in two folds."""
    for col in ("group", "event"):
        spread = pd.Series(folds).groupby(table[col].to_numpy()).nunique()
        if (spread > 1).any():
            raise LeakageError(f"{col} {spread[spread > 1].index[0]!r} is split across folds")


def present_macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over the classes present in `y` (the truth). A class that a bootstrap
    resample happens to lack has no defined F1; counting it as 0 (as macro_f1 over all
    classes does) biases the interval low, more so the more classes there are. Predictions
    of an absent class still cost the present classes their recall.

    Example:
        >>> present_macro_f1(np.array([0, 0, 1]), np.array([0, 0, 1]), 11)
        1.0
    """
    y, pred = np.asarray(y), np.asarray(pred)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes ** 2).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    present = cm.sum(1) > 0
    return float(np.mean((2 * tp / np.maximum(denom, 1))[present])) if present.any() else 0.0


def bootstrap(y: np.ndarray, pred: np.ndarray, units: np.ndarray, n_classes: int,
              n: int = 1000, seed: int = 0) -> dict:
    """Accuracy and macro F1 with 95% percentile intervals, resampling `units` (events) with
    replacement, so correlated clips (two views of one trial) move together. Macro F1 is
    over the classes present in each resample's truth (present_macro_f1); with every class
    present in `y` the point estimate equals macro F1 over all classes."""
    y, pred = np.asarray(y), np.asarray(pred)
    _, unit = np.unique(np.asarray(units), return_inverse=True)
    members = [np.flatnonzero(unit == u) for u in range(unit.max() + 1)]
    rng = np.random.default_rng(seed)
    accs, f1s = np.empty(n), np.empty(n)
    for i in range(n):
        take = np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
        accs[i] = accuracy_score(y[take], pred[take])
        f1s[i] = present_macro_f1(y[take], pred[take], n_classes)
    return {
        "n": len(y), "units": len(members),
        "accuracy": float(accuracy_score(y, pred)), "macro_f1": present_macro_f1(y, pred, n_classes),
        "accuracy_ci": [float(v) for v in np.percentile(accs, [2.5, 97.5])],
        "macro_f1_ci": [float(v) for v in np.percentile(f1s, [2.5, 97.5])],
    }
