"""Decision biases for macro F1: per-class log-probability offsets tuned on the validation split.

Argmax of calibrated probabilities is not the macro-F1-optimal decision when classes are
imbalanced or the loss (focal, soft F1) shifts the model toward some classes. Adding a bias
b_c to log p_c moves the decision boundaries; the biases that maximise macro F1 on the
validation split are kept only where they are expected to help people the model never saw:
the gain is estimated by repeated 2-fold cross-fitting over validation *persons* (tune on one
half, score the other), and a task keeps its biases only when that mean gain is positive and
every class has at least `min_per_class` validation images. The test split is never used.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

from facelab.data.labels import CLASS_NAMES, MISSING, TASKS

GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 2)


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro F1 over classes 0..k-1 (a class absent from both y and pred scores 0, as sklearn).

    Example:
        >>> macro_f1(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
        0.7777777777777777
    """
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))


def fit_biases(log_probs: np.ndarray, y: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """Biases (class 0 fixed at 0) maximising macro F1 of argmax(log_probs + b) on (log_probs, y);
    among equal scores the smallest total |b| wins, so no evidence means no change."""
    k = log_probs.shape[1]
    best, best_bias = -1.0, np.zeros(k)
    for rest in itertools.product(grid, repeat=k - 1):
        bias = np.array((0.0, *rest))
        score = macro_f1(y, (log_probs + bias).argmax(1), k)
        if score > best + 1e-12 or (abs(score - best) <= 1e-12 and np.abs(bias).sum() < np.abs(best_bias).sum()):
            best, best_bias = score, bias
    return best_bias


def cross_fitted_gains(log_probs: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       repeats: int = 10, seed: int = 0) -> np.ndarray:
    """Macro-F1 gains of tuned biases on held-out halves: `repeats` random splits of the
    groups (persons) into two halves, each half scored with biases tuned on the other."""
    k, rng, gains = log_probs.shape[1], np.random.default_rng(seed), []
    uniq = np.unique(groups)
    if len(uniq) < 4:
        return np.zeros(0)
    for _ in range(repeats):
        half = np.isin(groups, rng.permutation(uniq)[: len(uniq) // 2])
        for fit_rows, score_rows in ((half, ~half), (~half, half)):
            bias = fit_biases(log_probs[fit_rows], y[fit_rows])
            lp, yy = log_probs[score_rows], y[score_rows]
            gains.append(macro_f1(yy, (lp + bias).argmax(1), k) - macro_f1(yy, lp.argmax(1), k))
    return np.asarray(gains)


@dataclass
class TaskBias:
    """One task's outcome: the biases, whether they are used, and why."""

    bias: list[float]
    used: bool
    val_gain: float = 0.0       # mean cross-fitted macro-F1 gain on validation persons
    val_gain_sd: float = 0.0
    reason: str = ""


@dataclass
class Calibration:
    """Per-task decision biases; `apply` turns probabilities into biased, renormalised ones."""

    tasks: dict[str, TaskBias] = field(default_factory=dict)

    def apply(self, probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(probs)
        for task, tb in self.tasks.items():
            if tb.used and task in probs and len(probs[task]):
                logits = np.log(np.clip(probs[task], 1e-12, None)) + np.asarray(tb.bias)
                e = np.exp(logits - logits.max(1, keepdims=True))
                out[task] = e / e.sum(1, keepdims=True)
        return out

    @property
    def active(self) -> bool:
        return any(tb.used for tb in self.tasks.values())

    def describe(self) -> str:
        """One line per task, for logs and reports."""
        parts = []
        for task, tb in self.tasks.items():
            biases = ", ".join(f"{n} {b:+.1f}" for n, b in zip(CLASS_NAMES[task], tb.bias))
            state = f"used ({biases})" if tb.used else "not used"
            parts.append(f"{task}: {state}; {tb.reason}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {t: asdict(tb) for t, tb in self.tasks.items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration:
        return cls({t: TaskBias(**v) for t, v in (d or {}).items()})


def calibrate(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], groups: np.ndarray,
              min_per_class: int = 20, repeats: int = 10, seed: int = 0) -> Calibration:
    """Tune and vet decision biases per task on validation predictions.

    `probs` {task: (N, k)}, `targets` {task: (N,)} with MISSING for unlabelled rows, `groups`
    (N,) person ids (cross-fitting never puts one person in both halves).

    Example:
        >>> cal = calibrate(val_probs, val_targets, val_persons)  # doctest: +SKIP
        >>> test_probs = cal.apply(test_probs)  # doctest: +SKIP
    """
    out = {}
    for task in TASKS:
        if task not in probs:
            continue
        k = len(CLASS_NAMES[task])
        rows = np.flatnonzero(targets[task] != MISSING)
        y = targets[task][rows].astype(int)
        counts = np.bincount(y, minlength=k) if len(y) else np.zeros(k, int)
        if counts.min() < min_per_class:
            out[task] = TaskBias([0.0] * k, False, reason=f"too few validation images per class "
                                 f"({counts.min()} < {min_per_class})")
            continue
        lp = np.log(np.clip(probs[task][rows], 1e-12, None))
        gains = cross_fitted_gains(lp, y, np.asarray(groups)[rows], repeats, seed)
        gain = float(gains.mean()) if len(gains) else 0.0
        sd = float(gains.std()) if len(gains) else 0.0
        bias = fit_biases(lp, y)
        used = gain > 0 and bool(np.any(bias != 0))
        reason = f"cross-fitted validation macro-F1 gain {gain:+.4f} (sd {sd:.4f}, {len(gains)} halves)"
        out[task] = TaskBias([float(b) for b in bias], used, gain, sd, reason)
    return Calibration(out)


def checkpoint_calibration(configured: bool, ckpt: dict, use: bool | None = None
                           ) -> Calibration | None:
    """The calibration stored in a checkpoint when it is to be applied (`use`: None = as the
    run was configured, `configured`), else None. Asking for it on a run trained without it
    is an error."""
    from facelab.errors import ConfigError

    use = configured if use is None else use
    if not use:
        return None
    if "calibration" not in ckpt:
        raise ConfigError(f"{ckpt.get('path', 'checkpoint')}: holds no decision biases; train with "
                          "--set calibrate=true (or finish the run) or evaluate with --no-calibrate")
    return Calibration.from_dict(ckpt["calibration"])
