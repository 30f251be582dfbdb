"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from facelab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "adamp", "madgrad")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class OptimConfig:
    """Optimizer and schedule settings.

    Attributes:
        name: sgd | adam | adamw | adamp | madgrad.
        lr: peak learning rate (heads); the backbone uses lr * backbone_lr_mult.
        backbone_lr_mult: learning-rate factor of the pretrained backbone.
        weight_decay: decoupled (adamw) or L2 weight decay.
        momentum: SGD momentum.
        schedule: cosine (with linear warmup) | step | constant; stepped every batch.
        warmup_epochs: linear warmup length (fraction of epochs allowed).
        step_epochs, step_gamma: for the step schedule.
    """

    name: str = "adamw"
    lr: float = 1e-3
    backbone_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.3
    step_epochs: float = 2.0
    step_gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.name!r} unknown; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} unknown; use one of {SCHEDULES}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Optimizer with two parameter groups: backbone (scaled lr) and the rest (heads)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}, {"params": rest, "lr": cfg.lr}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamp":
        from adamp import AdamP

        return AdamP(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from madgrad import MADGRAD

    return MADGRAD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                     epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch LambdaLR schedule (its state_dict makes resume exact)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch) if cfg.schedule == "cosine" else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.step_gamma ** int(step / max(1, cfg.step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
