"""Batch augmentation on tensors (fast on CPU: one affine warp for the whole batch).

Input batches are uint8 (B, S, S, 3) arrays from the pixel cache; output float (B, 3, S, S)
in [0, 1]. All randomness comes from the generator passed in, so runs are reproducible
(which is why random erasing is written here rather than taken from torchvision or timm:
those draw from the global RNGs). Image-mixing augmentations (CutMix, MixUp) change the
labels too and live in facelab.train.mixing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from facelab.errors import ConfigError
from facelab.models.preprocess import add_eval_center_crop, center_crop, to_tensor  # noqa: F401  (re-exported)

CUTS = ("middle", "random")


@dataclass
class AugmentConfig:
    """Augmentation switches.

    Attributes:
        hflip: probability of a horizontal flip.
        scale: max relative zoom (0.1 = 0.9..1.1).
        translate: max shift as a fraction of the side.
        rotate: max rotation in degrees (keep small: faces are upright).
        color: max brightness/contrast/saturation change (0.2 = +-20%).
        erase: probability of random erasing per image (a rectangle filled with noise); 0 = off.
        erase_area: [min, max] erased fraction of the image area.
        center_crop: keep the central fraction of the side and resize back (0.9 = central
            90%); applied in training and, through `add_eval_center_crop`, at evaluation and
            prediction alike. 1.0 = off.
        cutmix: probability per batch of CutMix (a box pasted from another image of the batch,
            labels mixed by the pasted area); 0 = off.
        cutmix_alpha: Beta(alpha, alpha) draw of the kept area for CutMix.
        vcutmix: probability per batch of vertical half-image CutMix (left part of one image,
            right part of another, labels mixed by area); 0 = off.
        vcutmix_cut: "middle" (cut exactly at the middle) or "random" (x from the Beta draw).
        vcutmix_alpha: Beta(alpha, alpha) draw of the cut position for vcutmix_cut=random.
        mixup: probability per batch of MixUp (blend two images, labels mixed by the weight).
        mixup_alpha: Beta(alpha, alpha) draw of the MixUp weight.
    (cutmix + vcutmix + mixup must be <= 1: at most one of them is applied to a batch.)
    """

    hflip: float = 0.5
    scale: float = 0.1
    translate: float = 0.06
    rotate: float = 10.0
    color: float = 0.2
    erase: float = 0.0
    erase_area: list[float] = field(default_factory=lambda: [0.02, 0.25])
    center_crop: float = 1.0
    cutmix: float = 0.0
    cutmix_alpha: float = 1.0
    vcutmix: float = 0.0
    vcutmix_cut: str = "middle"
    vcutmix_alpha: float = 1.0
    mixup: float = 0.0
    mixup_alpha: float = 0.2

    def __post_init__(self) -> None:
        for name in ("hflip", "erase", "cutmix", "vcutmix", "mixup"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.cutmix + self.vcutmix + self.mixup > 1 + 1e-9:
            raise ConfigError("augment.cutmix + augment.vcutmix + augment.mixup must be <= 1 "
                              "(at most one mixing augmentation per batch)")
        if not 0 < self.center_crop <= 1:
            raise ConfigError(f"augment.center_crop must be in (0, 1] (1 = off), got {self.center_crop}")
        if self.vcutmix_cut not in CUTS:
            raise ConfigError(f"augment.vcutmix_cut {self.vcutmix_cut!r} unknown; use one of {CUTS}")
        lo, hi = self.erase_area
        if not 0 < lo <= hi < 1:
            raise ConfigError(f"augment.erase_area must be [min, max] with 0 < min <= max < 1, "
                              f"got {list(self.erase_area)}")
        for name in ("cutmix_alpha", "vcutmix_alpha", "mixup_alpha"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"augment.{name} must be > 0, got {getattr(self, name)}")


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
    if cfg.scale or cfg.translate or cfg.rotate or cfg.hflip or cfg.center_crop < 1:
        # The center crop is a zoom by 1/center_crop, folded into the same warp.
        s = cfg.center_crop / uniform(1 - cfg.scale, 1 + cfg.scale)
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
    if cfg.erase:
        x = random_erase(x, cfg.erase, cfg.erase_area, gen)
    return x.contiguous(memory_format=torch.channels_last)


def random_erase(x: torch.Tensor, p: float, area: list[float] | tuple[float, float],
                 gen: torch.Generator) -> torch.Tensor:
    """Fill one random rectangle (area fraction in `area`, aspect 0.3..3.3) of each image
    with uniform noise, with probability `p` per image (Zhong et al., 2017).

    Example:
        >>> x = torch.zeros(2, 3, 16, 16)
        >>> bool((random_erase(x, 1.0, (0.1, 0.2), torch.Generator().manual_seed(0)) > 0).any())
        True
    """
    b, _, h, w = x.shape
    hit = torch.rand(b, generator=gen) < p
    frac = torch.rand(b, generator=gen) * (area[1] - area[0]) + area[0]
    aspect = torch.exp(torch.rand(b, generator=gen) * (math.log(3.3) - math.log(0.3)) + math.log(0.3))
    pos = torch.rand(b, 2, generator=gen)
    x = x.clone()
    for i in hit.nonzero().flatten().tolist():
        eh = max(1, min(h, round(math.sqrt(frac[i] * h * w * aspect[i]))))
        ew = max(1, min(w, round(math.sqrt(frac[i] * h * w / aspect[i]))))
        top, left = int(pos[i, 0] * (h - eh + 1)), int(pos[i, 1] * (w - ew + 1))
        x[i, :, top : top + eh, left : left + ew] = torch.rand(x.shape[1], eh, ew, generator=gen)
    return x
