"""Losses for partially labelled multi-task data: CE with label smoothing and focal loss.

Every loss takes log-probabilities and a target with -1 for "unknown"; unknown targets add
no loss. For the 18-way head the target is a *set* of classes consistent with the known
labels (e.g. "mask=incorrect, gender/age unknown" is 6 classes) and the loss is the
negative log of that set's total probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from facelab.data.labels import MISSING, NUM_CLASSES, TASK_CLASSES, TASKS, decode
from facelab.errors import ConfigError

LOSS_KINDS = ("ce", "focal")


@dataclass
class LossConfig:
    """Loss settings.

    Attributes:
        kind: "ce" (cross-entropy) or "focal".
        label_smoothing: mass spread uniformly over all classes (0 disables).
        focal_gamma: focusing exponent of the focal loss.
        class_weights: "none" or "balanced" (inverse square-root class frequency per task).
        task_weights: weight of each task's loss in the sum.
    """

    kind: str = "ce"
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    class_weights: str = "none"
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"mask": 1.0, "gender": 1.0, "age": 1.0})

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"loss kind {self.kind!r} unknown; use one of {LOSS_KINDS}")
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError("loss.class_weights must be 'none' or 'balanced'")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("loss.label_smoothing must be in [0, 1)")


def set_nll(
    logp_target: torch.Tensor, logp_all: torch.Tensor, cfg: LossConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss given log p(target) (B,) and all log-probs (B, K); focal and smoothing applied.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> round(float(set_nll(lp[:, 0], lp, LossConfig(label_smoothing=0))), 4)
        0.6931
    """
    nll = -logp_target
    if cfg.kind == "focal":
        nll = nll * (1 - logp_target.exp()).clamp(min=0) ** cfg.focal_gamma
    if cfg.label_smoothing:
        uniform = -logp_all.clamp(min=-100).mean(-1)
        nll = (1 - cfg.label_smoothing) * nll + cfg.label_smoothing * uniform
    if weights is not None:
        return (nll * weights).sum() / weights.sum().clamp(min=1e-12)
    return nll.mean()


_PARTS = torch.tensor([decode(c) for c in range(NUM_CLASSES)], dtype=torch.long)


def consistent_classes(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 18) bool: classes agreeing with every known task label of each sample."""
    ok = torch.ones(len(targets["mask"]), NUM_CLASSES, dtype=torch.bool)
    for j, task in enumerate(TASKS):
        y = targets[task].unsqueeze(1)
        ok &= (y == MISSING) | (_PARTS[:, j].unsqueeze(0) == y)
    return ok


class MultiTaskLoss:
    """Sum of per-task losses over the samples that have each label.

    Args:
        cfg: loss settings.
        class_weights: optional {task: (k,) tensor} per-class weights.
    """

    def __init__(self, cfg: LossConfig, class_weights: dict[str, torch.Tensor] | None = None):
        self.cfg = cfg
        self.class_weights = class_weights or {}

    def __call__(self, logp: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 joint: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss from per-task log-probs (multitask head) or joint (B,18) log-probs (flat head)."""
        if joint is not None:
            ok = consistent_classes(targets)
            has_any = torch.stack([targets[t] != MISSING for t in TASKS], 1).any(1)
            if not has_any.any():
                return joint.sum() * 0, {}
            lt = joint.masked_fill(~ok, float("-inf")).logsumexp(-1)
            loss = set_nll(lt[has_any], joint[has_any], self.cfg)
            return loss, {"all": float(loss.detach())}
        total, parts = None, {}
        for task in TASKS:
            y = targets[task]
            known = y != MISSING
            if not known.any() or self.cfg.task_weights.get(task, 1.0) == 0:
                continue
            lp = logp[task][known]
            w = self.class_weights.get(task)
            loss = set_nll(lp.gather(1, y[known, None]).squeeze(1), lp, self.cfg,
                           None if w is None else w[y[known]])
            loss = loss * self.cfg.task_weights.get(task, 1.0)
            parts[task] = float(loss.detach())
            total = loss if total is None else total + loss
        if total is None:
            total = sum(v.sum() for v in logp.values()) * 0
        return total, parts


def balanced_class_weights(labels: dict[str, "np.ndarray"]) -> dict[str, torch.Tensor]:  # noqa: F821
    """Inverse square-root frequency weights per task, normalised to mean 1 over samples."""
    import numpy as np

    out = {}
    for task in TASKS:
        y = labels[task][labels[task] != MISSING]
        if len(y) == 0:
            continue
        counts = np.bincount(y, minlength=TASK_CLASSES[task]).astype(float)
        w = 1 / np.sqrt(np.maximum(counts, 1))
        w = w / (w[y].mean())
        out[task] = torch.tensor(w, dtype=torch.float32)
    return out
