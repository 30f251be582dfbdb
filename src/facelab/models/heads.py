"""Classification heads over backbone features, and how their outputs map to the 18 classes.

- "multitask": three linear heads (mask 3, gender 2, age 3) trained jointly; a missing label
  adds no loss. The 18-class probability is the product of the three task probabilities.
- "flat18": one 18-way head. Partial labels still train it: the loss is the negative log of
  the total probability of the classes consistent with the known labels. Task probabilities
  are marginals of the 18-way softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from facelab.data.labels import NUM_CLASSES, TASK_CLASSES, TASKS, decode
from facelab.errors import ConfigError

HEAD_KINDS = ("multitask", "flat18")

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


def create_head(kind: str, in_features: int, dropout: float = 0.2) -> nn.Module:
    """A head by name ("multitask" or "flat18")."""
    if kind == "multitask":
        return MultiTaskHead(in_features, dropout)
    if kind == "flat18":
        return Flat18Head(in_features, dropout)
    raise ConfigError(f"unknown head {kind!r}; use one of {HEAD_KINDS}")


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
