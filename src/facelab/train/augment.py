"""Batch augmentation on tensors (fast on CPU: one affine warp for the whole batch).

Input batches are uint8 (B, S, S, 3) arrays from the pixel cache; output float (B, 3, S, S)
in [0, 1]. All randomness comes from the generator passed in, so runs are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Augmentation switches.

    Attributes:
        hflip: probability of a horizontal flip.
        scale: max relative zoom (0.1 = 0.9..1.1).
        translate: max shift as a fraction of the side.
        rotate: max rotation in degrees (keep small: faces are upright).
        color: max brightness/contrast/saturation change (0.2 = +-20%).
    """

    hflip: float = 0.5
    scale: float = 0.1
    translate: float = 0.06
    rotate: float = 10.0
    color: float = 0.2


def to_tensor(batch: np.ndarray, channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] (channels_last memory when asked)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random flip, affine (zoom/shift/rotate) and colour jitter, per sample.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.rand(2, 3, 32, 32), AugmentConfig(), g).shape
        torch.Size([2, 3, 32, 32])
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    flip = torch.where(torch.rand(b, generator=gen) < cfg.hflip, -1.0, 1.0)
    if cfg.scale or cfg.translate or cfg.rotate or cfg.hflip:
        s = 1 / uniform(1 - cfg.scale, 1 + cfg.scale)
        a = uniform(-cfg.rotate, cfg.rotate) * math.pi / 180
        tx, ty = uniform(-cfg.translate, cfg.translate) * 2, uniform(-cfg.translate, cfg.translate) * 2
        theta = torch.stack([
            torch.stack([s * torch.cos(a) * flip, -s * torch.sin(a), tx], 1),
            torch.stack([s * torch.sin(a) * flip, s * torch.cos(a), ty], 1),
        ], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.color:
        c = cfg.color
        bright = uniform(1 - c, 1 + c).view(b, 1, 1, 1)
        contrast = uniform(1 - c, 1 + c).view(b, 1, 1, 1)
        sat = uniform(1 - c, 1 + c).view(b, 1, 1, 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = gray + (x - gray) * sat
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
        x = x.clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last)
