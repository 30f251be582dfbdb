"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from facelab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "adamp", "madgrad")
SCHEDULES = ("cosine", "step", "constant", "cyclic", "onecycle", "plateau")
CYCLE_MODES = ("triangular", "triangular2", "exp_range")


@dataclass
class OptimConfig:
    """Optimizer and schedule settings.

    Attributes:
        name: sgd | adam | adamw | adamp | madgrad.
        lr: peak learning rate (heads); the backbone uses lr * backbone_lr_mult.
        backbone_lr_mult: learning-rate factor of the pretrained backbone.
        weight_decay: decoupled (adamw) or L2 weight decay.
        momentum: SGD momentum.
        schedule: cosine (with linear warmup) | step | constant | cyclic | onecycle | plateau.
            All but plateau are stepped every batch. cyclic = torch CyclicLR between
            lr * cycle_min and lr; onecycle = torch OneCycleLR peaking at lr after
            warmup_epochs; plateau = ReduceLROnPlateau on the validation score, stepped
            once per epoch.
        warmup_epochs: linear warmup length (fraction of epochs allowed); cosine and onecycle.
        step_epochs, step_gamma: for the step schedule.
        cycle_epochs: length of one full cyclic cycle (up and down) in epochs.
        cycle_min: lowest cyclic lr as a fraction of lr.
        cycle_mode: triangular | triangular2 (amplitude halves each cycle) | exp_range.
        plateau_factor: lr multiplier when the validation score stalls.
        plateau_patience: epochs without improvement before the lr drops.
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
    cycle_epochs: float = 2.0
    cycle_min: float = 0.1
    cycle_mode: str = "triangular"
    plateau_factor: float = 0.5
    plateau_patience: int = 1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.name!r} unknown; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} unknown; use one of {SCHEDULES}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.cycle_mode not in CYCLE_MODES:
            raise ConfigError(f"optim.cycle_mode {self.cycle_mode!r} unknown; use one of {CYCLE_MODES}")
        if not 0 < self.cycle_min <= 1 or self.cycle_epochs <= 0:
            raise ConfigError("optim.cycle_min must be in (0, 1] and optim.cycle_epochs > 0")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"optim.plateau_factor must be in (0, 1), got {self.plateau_factor}")


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
        # timm's AdamP (same algorithm as the adamp package, whose weight views fail on
        # channels_last parameters).
        from timm.optim import AdamP

        return AdamP(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from madgrad import MADGRAD

    return MADGRAD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                     epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule by name (its state_dict makes resume exact); see `steps_per_batch`.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        >>> sched = create_scheduler(opt, OptimConfig(schedule="cyclic"), 10, 4)
        >>> type(sched).__name__, steps_per_batch(sched)
        ('CyclicLR', True)
    """
    total = max(1, steps_per_epoch * epochs)
    lrs = [g["lr"] for g in optimizer.param_groups]
    sch = torch.optim.lr_scheduler
    if cfg.schedule == "cyclic":
        up = max(1, round(cfg.cycle_epochs * steps_per_epoch / 2))
        return sch.CyclicLR(optimizer, base_lr=[lr * cfg.cycle_min for lr in lrs], max_lr=lrs,
                            step_size_up=up, mode=cfg.cycle_mode, cycle_momentum=False)
    if cfg.schedule == "onecycle":
        pct = min(0.5, max(1 / total, cfg.warmup_epochs / max(1, epochs)))
        return sch.OneCycleLR(optimizer, max_lr=lrs, total_steps=total + 1, pct_start=pct,
                              cycle_momentum=False)
    if cfg.schedule == "plateau":
        return sch.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                     patience=cfg.plateau_patience)
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


def steps_per_batch(scheduler) -> bool:
    """True for schedules stepped every batch; False for plateau (stepped per epoch with the
    validation score: ``scheduler.step(score)``)."""
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
