"""Losses for partially labelled multi-task data: CE (label smoothing), focal, soft-F1, sums.

Every loss takes log-probabilities and a target with -1 for "unknown"; unknown targets add
no loss. For the 18-way head the target is a *set* of classes consistent with the known
labels (e.g. "mask=incorrect, gender/age unknown" is 6 classes) and the CE/focal loss is the
negative log of that set's total probability; soft-F1 uses the head's per-task marginals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from facelab.data.labels import MISSING, TASK_CLASSES, TASKS
from facelab.errors import ConfigError
from facelab.models.heads import consistent_classes, task_log_probs

LOSS_KINDS = ("ce", "focal", "soft_f1")

__all__ = ["LOSS_KINDS", "LossConfig", "MultiTaskLoss", "balanced_class_weights",
           "consistent_classes", "set_nll", "soft_f1_loss", "soft_nll"]


@dataclass
class LossConfig:
    """Loss settings.

    Attributes:
        kind: "ce" (cross-entropy), "focal" or "soft_f1"; used when `terms` is empty.
        terms: weighted sum of losses, e.g. {focal: 0.6, soft_f1: 0.4}; keys are loss kinds,
            values their weights. Empty (default) = `kind` alone.
        label_smoothing: mass spread uniformly over all classes (0 disables); ce/focal only.
        focal_gamma: focusing exponent of the focal loss.
        class_weights: "none" or "balanced" (inverse square-root class frequency per task);
            ce/focal only.
        task_weights: weight of each task's loss in the sum.
        age_sigma: soft age-group targets for samples with an exact age: the age is read
            with Gaussian noise of this many years, so faces near a group boundary (29, 59)
            train towards both groups (0 = hard labels). Multitask head only; label smoothing
            still applies on top.
    """

    kind: str = "ce"
    terms: dict[str, float] = field(default_factory=dict)
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    class_weights: str = "none"
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"mask": 1.0, "gender": 1.0, "age": 1.0})
    age_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"loss kind {self.kind!r} unknown; use one of {LOSS_KINDS}")
        bad = [k for k in self.terms or {} if k not in LOSS_KINDS]
        if bad:
            raise ConfigError(f"loss.terms: unknown loss kind(s) {bad}; use keys from {LOSS_KINDS}, "
                              "e.g. {focal: 0.6, soft_f1: 0.4}")
        negative = {k: w for k, w in (self.terms or {}).items() if not w >= 0}
        if negative:
            raise ConfigError(f"loss.terms: weights must be >= 0, got {negative}")
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError("loss.class_weights must be 'none' or 'balanced'")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("loss.label_smoothing must be in [0, 1)")
        if not 0 <= self.age_sigma <= 20:
            raise ConfigError(f"loss.age_sigma is in years, 0 (hard labels) to 20; got {self.age_sigma}")

    def weighted_terms(self) -> dict[str, float]:
        """{loss kind: weight} actually summed."""
        return dict(self.terms) if self.terms else {self.kind: 1.0}


def set_nll(
    logp_target: torch.Tensor, logp_all: torch.Tensor, cfg: LossConfig,
    weights: torch.Tensor | None = None, kind: str | None = None,
) -> torch.Tensor:
    """Mean loss given log p(target) (B,) and all log-probs (B, K); focal and smoothing applied.

    `kind` ("ce" or "focal") defaults to `cfg.kind`.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> round(float(set_nll(lp[:, 0], lp, LossConfig(label_smoothing=0))), 4)
        0.6931
    """
    nll = -logp_target
    if (kind or cfg.kind) == "focal":
        nll = nll * (1 - logp_target.exp()).clamp(min=0) ** cfg.focal_gamma
    return _smooth_and_reduce(nll, logp_all, cfg, weights)


def _smooth_and_reduce(nll: torch.Tensor, logp_all: torch.Tensor, cfg: LossConfig,
                       weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample losses (B,) -> label-smoothed, (weighted) mean."""
    if cfg.label_smoothing:
        uniform = -logp_all.clamp(min=-100).mean(-1)
        nll = (1 - cfg.label_smoothing) * nll + cfg.label_smoothing * uniform
    if weights is not None:
        return (nll * weights).sum() / weights.sum().clamp(min=1e-12)
    return nll.mean()


def soft_nll(logp: torch.Tensor, q: torch.Tensor, cfg: LossConfig,
             weights: torch.Tensor | None = None, kind: str | None = None) -> torch.Tensor:
    """Mean loss of log-probs (B, K) against target distributions q (B, K): the expected
    CE / focal loss under q, label smoothing and per-sample weights as in `set_nll`.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> round(float(soft_nll(lp, torch.tensor([[1.0, 0.0]]), LossConfig(label_smoothing=0))), 4)
        0.6931
    """
    nll = -logp
    if (kind or cfg.kind) == "focal":
        nll = nll * (1 - logp.exp()).clamp(min=0) ** cfg.focal_gamma
    return _smooth_and_reduce((q * nll).sum(-1), logp, cfg, weights)


def soft_f1_loss(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-7,
                 q: torch.Tensor | None = None) -> torch.Tensor:
    """1 - macro soft F1 from probabilities (B, K) and targets (B,) (MISSING rows ignored).

    True/false positives and false negatives are sums of probabilities instead of counts, so
    the loss is differentiable. The macro mean runs over the classes present in the batch,
    so perfect predictions give 0. `q` (B, K), if given, replaces the one-hot targets with
    target distributions (soft age groups).

    Example:
        >>> y = torch.tensor([0, 1, -1])
        >>> good = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
        >>> bad = torch.tensor([[0.4, 0.6], [0.6, 0.4], [0.5, 0.5]])
        >>> bool(soft_f1_loss(good, y) < soft_f1_loss(bad, y))
        True
    """
    known = y != MISSING
    if not known.any():
        return probs.sum() * 0
    p = probs[known]
    onehot = F.one_hot(y[known], probs.shape[1]).to(p.dtype) if q is None else q[known].to(p.dtype)
    tp = (p * onehot).sum(0)
    fp = (p * (1 - onehot)).sum(0)
    fn = ((1 - p) * onehot).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    return 1 - f1[onehot.sum(0) > 0].mean()


class MultiTaskLoss:
    """Weighted sum of loss terms, each a sum of per-task losses over the samples that have
    each label.

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
        terms = self.cfg.weighted_terms()
        total, parts = None, {}
        for kind, weight in terms.items():
            if kind == "soft_f1":
                # The flat head's task marginals (log_softmax of log-probs is the identity).
                loss, sub = self._soft_f1(logp if joint is None else task_log_probs({"all": joint}),
                                          targets)
            elif joint is not None:
                loss, sub = self._set_nll(joint, targets, kind)
            else:
                loss, sub = self._task_nll(logp, targets, kind)
            loss = loss * weight  # a single term keeps its weight too ({soft_f1: 0.4})
            if len(terms) > 1:
                sub = {f"{kind}_{k}": v * weight for k, v in sub.items()}
            else:
                sub = {k: v * weight for k, v in sub.items()}
            parts.update(sub)
            total = loss if total is None else total + loss
        return total, parts

    def _set_nll(self, joint, targets, kind):
        ok = consistent_classes(targets)
        has_any = torch.stack([targets[t] != MISSING for t in TASKS], 1).any(1)
        if not has_any.any():
            return joint.sum() * 0, {}
        lt = joint.masked_fill(~ok, float("-inf")).logsumexp(-1)
        loss = set_nll(lt[has_any], joint[has_any], self.cfg, kind=kind)
        return loss, {"all": float(loss.detach())}

    def _task_nll(self, logp, targets, kind):
        def nll(task, lp, y, q):
            w = None if task not in self.class_weights else self.class_weights[task][y]
            if q is not None:
                return soft_nll(lp, q, self.cfg, w, kind=kind)
            return set_nll(lp.gather(1, y[:, None]).squeeze(1), lp, self.cfg, w, kind=kind)

        return self._per_task(logp, targets, nll)

    def _soft_f1(self, logp, targets):
        return self._per_task(logp, targets, lambda task, lp, y, q: soft_f1_loss(lp.exp(), y, q=q))

    def _per_task(self, logp, targets, fn):
        total, parts = None, {}
        for task in TASKS:
            y = targets[task]
            known = y != MISSING
            if not known.any() or self.cfg.task_weights.get(task, 1.0) == 0:
                continue
            q = targets.get(f"{task}_soft")  # (B, K) target distributions, NaN rows = use y
            if q is not None:
                q = q[known]
                hard = torch.isnan(q).any(1)
                q = torch.where(hard[:, None], F.one_hot(y[known], q.shape[1]).to(q.dtype), q)
            loss = fn(task, logp[task][known], y[known], q)
            loss = loss * self.cfg.task_weights.get(task, 1.0)
            parts[task] = float(loss.detach())
            total = loss if total is None else total + loss
        if total is None:
            total = sum(v.sum() for v in logp.values()) * 0
        return total, parts


def balanced_class_weights(labels: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:  # noqa: F821
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
