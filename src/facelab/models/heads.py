"""Classification heads over backbone features, and how their outputs map to the 18 classes.

- "multitask": three linear heads (mask 3, gender 2, age 3) trained jointly; a missing label
  adds no loss. The 18-class probability is the product of the three task probabilities.
- "flat18": one 18-way head. Partial labels still train it: the loss is the negative log of
  the total probability of the classes consistent with the known labels. Task probabilities
  are marginals of the 18-way softmax.

Either head can be a cosine classifier with an ArcFace or CosFace margin (`MarginHead`):
logits are scale * cos(feature, class weight); in training the target logits get the margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelab.data.labels import MISSING, NUM_CLASSES, TASK_CLASSES, TASKS, decode
from facelab.errors import ConfigError

HEAD_KINDS = ("multitask", "flat18")
MARGINS = ("none", "arcface", "cosface")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}

# (18, 3) table: mask, gender, age of each class id.
_CLASS_PARTS = torch.tensor([decode(c) for c in range(NUM_CLASSES)], dtype=torch.long)


class MultiTaskHead(nn.Module):
    """Three linear task heads over shared features."""

    def __init__(self, in_features: int, dropout: float = 0.2):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(in_features, TASK_CLASSES[t]) for t in TASKS})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.dropout(feats)
        return {t: head(feats) for t, head in self.heads.items()}


class Flat18Head(nn.Module):
    """One 18-way linear head."""

    def __init__(self, in_features: int, dropout: float = 0.2):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, NUM_CLASSES)

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"all": self.fc(self.dropout(feats))}


def consistent_classes(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 18) bool: classes agreeing with every known task label of each sample."""
    device = targets["mask"].device
    parts = _CLASS_PARTS.to(device)
    ok = torch.ones(len(targets["mask"]), NUM_CLASSES, dtype=torch.bool, device=device)
    for j, task in enumerate(TASKS):
        y = targets[task].unsqueeze(1)
        ok &= (y == MISSING) | (parts[:, j].unsqueeze(0) == y)
    return ok


class MarginHead(nn.Module):
    """Cosine classifier(s) with an ArcFace (cos(theta + m)) or CosFace (cos(theta) - m) margin.

    Logits are `scale * cos(theta)` between the L2-normalised features and class weights.
    Given `targets` (training), the target logit of each sample with a known label becomes
    `scale * cos(theta + m)` (arcface) or `scale * (cos(theta) - m)` (cosface). For the
    flat18 layout a partially labelled sample's target is the set of consistent classes,
    and every class of the set gets the margin. Without targets (evaluation) no margin.

    Example:
        >>> head = MarginHead(8, "multitask", "arcface", scale=30.0, margin=0.5)
        >>> out = head(torch.randn(2, 8))
        >>> bool(out["mask"].abs().max() <= 30)
        True
    """

    def __init__(self, in_features: int, layout: str, kind: str, scale: float = 30.0,
                 margin: float = 0.5, dropout: float = 0.2):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ConfigError(f"unknown margin {kind!r}; use one of {MARGINS}")
        classes = {t: TASK_CLASSES[t] for t in TASKS} if layout == "multitask" else {"all": NUM_CLASSES}
        self.kind, self.scale, self.margin = kind, float(scale), float(margin)
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.ParameterDict(
            {name: nn.Parameter(nn.init.xavier_uniform_(torch.empty(k, in_features)))
             for name, k in classes.items()})

    def forward(self, feats: torch.Tensor,
                targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        f = F.normalize(self.dropout(feats), dim=1)
        out = {}
        for name, w in self.weight.items():
            cos = f @ F.normalize(w, dim=1).T
            if targets is not None:
                cos = torch.where(self._target_mask(name, targets, cos.shape[1]),
                                  self._with_margin(cos), cos)
            out[name] = self.scale * cos
        return out

    def _target_mask(self, name: str, targets: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        if name == "all":
            known = torch.stack([targets[t] != MISSING for t in TASKS], 1).any(1, keepdim=True)
            return consistent_classes(targets) & known
        y = targets[name]
        return F.one_hot(y.clamp(min=0), k).bool() & (y != MISSING).unsqueeze(1)

    def _with_margin(self, cos: torch.Tensor) -> torch.Tensor:
        m = self.margin
        if self.kind == "cosface":
            return cos - m
        sin = (1 - cos * cos).clamp(min=1e-12).sqrt()
        phi = cos * math.cos(m) - sin * math.sin(m)
        # Past theta = pi - m, cos(theta + m) stops decreasing; continue linearly (insightface).
        return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


def create_head(kind: str, in_features: int, dropout: float = 0.2, margin: str = "none",
                scale: float = 30.0, m: float | None = None) -> nn.Module:
    """A head by name ("multitask" or "flat18"), optionally a cosine head with a margin.

    Example:
        >>> type(create_head("flat18", 16, margin="cosface")).__name__
        'MarginHead'
    """
    if kind not in HEAD_KINDS:
        raise ConfigError(f"unknown head {kind!r}; use one of {HEAD_KINDS}")
    if margin not in MARGINS:
        raise ConfigError(f"unknown model.margin {margin!r}; use one of {MARGINS}")
    if margin != "none":
        return MarginHead(in_features, kind, margin, scale,
                          DEFAULT_MARGIN[margin] if m is None else m, dropout)
    if kind == "multitask":
        return MultiTaskHead(in_features, dropout)
    return Flat18Head(in_features, dropout)


def task_log_probs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-task log-probabilities from either head's raw outputs.

    Example:
        >>> lp = task_log_probs({"all": torch.zeros(1, 18)})
        >>> round(float(lp["gender"].exp()[0, 0]), 3)
        0.5
    """
    if "all" in outputs:
        log_p = outputs["all"].log_softmax(-1)
        parts = _CLASS_PARTS.to(log_p.device)
        result = {}
        for j, task in enumerate(TASKS):
            onehot = nn.functional.one_hot(parts[:, j], TASK_CLASSES[task]).T.bool()  # (k, 18)
            result[task] = torch.stack(
                [log_p.masked_fill(~row, float("-inf")).logsumexp(-1) for row in onehot], -1
            )
        return result
    return {t: outputs[t].log_softmax(-1) for t in TASKS}


def class18_log_probs(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 18) log-probabilities of the combined classes."""
    if "all" in outputs:
        return outputs["all"].log_softmax(-1)
    lp = task_log_probs(outputs)
    parts = _CLASS_PARTS.to(lp["mask"].device)
    return lp["mask"][:, parts[:, 0]] + lp["gender"][:, parts[:, 1]] + lp["age"][:, parts[:, 2]]
