"""Weight averaging: SWA (stochastic weight averaging) and EMA, from torch.optim.swa_utils.

The trainer validates and saves the averaged weights (so best.pt / last.pt "model" is what
evaluate and predict load); last.pt also holds the raw weights and this averager's state so
a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from facelab.errors import ConfigError


@dataclass
class SwaConfig:
    """Stochastic weight averaging (Izmailov et al., 2018).

    Attributes:
        start_epoch: first epoch (1-based) whose end-of-epoch weights enter the average;
            from then on the lr follows SWALR towards `lr`. 0 = off.
        lr: SWA learning rate of the heads (the backbone gets lr * optim.backbone_lr_mult).
        anneal_epochs: epochs to anneal from the current lr to `lr` (fractions allowed).
        anneal_strategy: cos | linear.
    BatchNorm statistics of the average are recomputed (update_bn) over the training images
    (center-cropped like evaluation, not otherwise augmented) after every averaged epoch.
    """

    start_epoch: int = 0
    lr: float = 5e-4
    anneal_epochs: float = 1.0
    anneal_strategy: str = "cos"

    def __post_init__(self) -> None:
        if self.start_epoch < 0 or self.lr <= 0 or self.anneal_epochs < 0:
            raise ConfigError("swa.start_epoch must be >= 0 (0 = off), swa.lr > 0, "
                              "swa.anneal_epochs >= 0")
        if self.anneal_strategy not in ("cos", "linear"):
            raise ConfigError(f"swa.anneal_strategy {self.anneal_strategy!r}: use cos or linear")


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (and BatchNorm buffers), updated every step.

    Attributes:
        decay: weight of the old average per step (e.g. 0.999); 0 = off.
    """

    decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.decay < 1:
            raise ConfigError(f"ema.decay must be in [0, 1) (0 = off), got {self.decay}")


@torch.no_grad()
def update_bn_keep_frozen(batches: Iterable[torch.Tensor], model: nn.Module) -> None:
    """Recompute the BatchNorm statistics of `model` over `batches`, like torch's update_bn,
    except BatchNorm layers that stay in eval mode under model.train() (frozen backbone
    stages, see model.freeze) keep their statistics *and use them* during the pass.

    torch's update_bn resets every BatchNorm first, so a frozen (eval-mode) layer would
    normalise with mean 0 / var 1 while the pass runs and every later layer's statistics
    would be computed from wrong activations.
    """
    was_training = model.training
    model.train()
    live = [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = {m: m.momentum for m in live}
    for m in live:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)


class WeightAverager:
    """SWA or EMA over a model being trained (or neither: then every method is a no-op).

    Args:
        model: the raw model the optimizer updates.
        swa, ema: settings (at most one may be on).
        steps_per_epoch: batches per epoch (SWALR anneals per batch).

    Example:
        >>> avg = WeightAverager(nn.Linear(2, 2), SwaConfig(), EmaConfig(decay=0.9), 10)
        >>> avg.kind
        'ema'
    """

    def __init__(self, model: nn.Module, swa: SwaConfig, ema: EmaConfig, steps_per_epoch: int):
        if swa.start_epoch and ema.decay:
            raise ConfigError("swa and ema are both on; choose one (set swa.start_epoch=0 or "
                              "ema.decay=0)")
        self.swa_cfg, self.steps = swa, steps_per_epoch
        self.kind = "swa" if swa.start_epoch else "ema" if ema.decay else None
        self.averaged: AveragedModel | None = None
        self.swa_scheduler: SWALR | None = None
        if self.kind == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema.decay),
                                          use_buffers=True)
        elif self.kind == "swa":
            self.averaged = AveragedModel(model)

    def swa_active(self, epoch: int) -> bool:
        """Whether 0-based `epoch` is in the SWA phase (SWALR instead of the base schedule)."""
        return self.kind == "swa" and epoch + 1 >= self.swa_cfg.start_epoch

    def scheduler(self, optimizer: torch.optim.Optimizer, base_lr_mults: list[float]) -> SWALR:
        """The SWALR schedule, created on first use (per-batch steps)."""
        if self.swa_scheduler is None:
            self.swa_scheduler = SWALR(
                optimizer, [self.swa_cfg.lr * m for m in base_lr_mults],
                anneal_epochs=round(self.swa_cfg.anneal_epochs * self.steps),
                anneal_strategy=self.swa_cfg.anneal_strategy)
        return self.swa_scheduler

    def after_step(self, model: nn.Module) -> None:
        if self.kind == "ema":
            self.averaged.update_parameters(model)

    def after_epoch(self, model: nn.Module, epoch: int, bn_batches) -> None:
        """SWA: add this epoch's weights to the average and recompute its BatchNorm stats
        (`bn_batches` is a callable giving an iterable of input batches)."""
        if self.swa_active(epoch):
            self.averaged.update_parameters(model)
            update_bn_keep_frozen(bn_batches(), self.averaged.module)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to validate and save: the average once it holds weights, else `model`."""
        if self.averaged is not None and int(self.averaged.n_averaged) > 0:
            return self.averaged.module
        return model

    def state_dict(self) -> dict:
        if self.kind is None:
            return {}
        return {"averaged": self.averaged.state_dict(),
                "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler else None}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer,
                        base_lr_mults: list[float]) -> None:
        if self.kind is None or not state:
            return
        self.averaged.load_state_dict(state["averaged"])
        if state.get("swa_scheduler") is not None:
            self.scheduler(optimizer, base_lr_mults).load_state_dict(state["swa_scheduler"])
