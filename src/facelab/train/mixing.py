"""Image-mixing augmentations that also mix the labels: CutMix, vertical CutMix, MixUp.

`mix_batch` pairs every image with another of the same batch (a random permutation) and
returns the mixed images plus a `Mix` record: the partner index `perm` and `lam`, the share
of the first image (the area actually kept, after the pasted box is clipped to the image).
The training loss is then `lam * L(y) + (1 - lam) * L(y[perm])`, where each term ignores its
own MISSING targets, so partially labelled data mixes correctly.

timm's Mixup is not used: it turns targets into one-hot soft labels of one task, which
cannot express several tasks with missing labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facelab.train.augment import AugmentConfig


@dataclass
class Mix:
    """How a batch was mixed.

    Attributes:
        kind: "cutmix", "vcutmix" or "mixup".
        perm: (B,) index of each image's partner.
        lam: share of the original image (kept area, or blend weight); labels mix the same.
        box: (top, bottom, left, right) of the region taken from the partner (cutmix/vcutmix).
    """

    kind: str
    perm: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None


def _beta(alpha: float, gen: torch.Generator) -> float:
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(x: torch.Tensor, cfg: AugmentConfig,
              gen: torch.Generator) -> tuple[torch.Tensor, Mix | None]:
    """Apply at most one of CutMix / vertical CutMix / MixUp to the batch (B, C, H, W).

    Draws nothing from `gen` when all three are off, so enabling none keeps runs identical.

    Example:
        >>> x = torch.rand(4, 3, 8, 8)
        >>> out, mix = mix_batch(x, AugmentConfig(vcutmix=1.0), torch.Generator().manual_seed(0))
        >>> mix.kind, mix.lam, mix.box
        ('vcutmix', 0.5, (0, 8, 4, 8))
    """
    if not (cfg.cutmix or cfg.vcutmix or cfg.mixup) or x.shape[0] < 2:
        return x, None
    u = float(torch.rand(1, generator=gen))
    if u < cfg.cutmix:
        kind = "cutmix"
    elif u < cfg.cutmix + cfg.vcutmix:
        kind = "vcutmix"
    elif u < cfg.cutmix + cfg.vcutmix + cfg.mixup:
        kind = "mixup"
    else:
        return x, None
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=gen)
    if kind == "mixup":
        lam = _beta(cfg.mixup_alpha, gen)
        return lam * x + (1 - lam) * x[perm], Mix(kind, perm, lam)
    if kind == "cutmix":
        # A box of (1 - lam) of the area, centred anywhere and clipped to the image.
        r = np.sqrt(1 - _beta(cfg.cutmix_alpha, gen))
        ch, cw = int(h * r), int(w * r)
        cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=gen))
        cy, cx = cy % h, cx % w
        box = (max(cy - ch // 2, 0), min(cy + ch - ch // 2, h),
               max(cx - cw // 2, 0), min(cx + cw - cw // 2, w))
    else:  # vcutmix: left part from the image itself, right part from the partner
        if cfg.vcutmix_cut == "middle":
            cut = w // 2
        else:
            cut = min(w - 1, max(1, round(_beta(cfg.vcutmix_alpha, gen) * w)))
        box = (0, h, cut, w)
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    return out, Mix(kind, perm, lam, box)


def mixed_targets(targets: dict[str, torch.Tensor],
                  mix: Mix | None) -> list[tuple[dict[str, torch.Tensor], float]]:
    """[(targets, weight), ...] for the loss: [(y, 1)] unmixed, else [(y, lam), (y[perm], 1-lam)].

    Example:
        >>> y = {"mask": torch.tensor([0, -1])}
        >>> [(t["mask"].tolist(), w) for t, w in mixed_targets(y, Mix("mixup", torch.tensor([1, 0]), 0.7))]
        [([0, -1], 0.7), ([-1, 0], 0.30000000000000004)]
    """
    if mix is None:
        return [(targets, 1.0)]
    return [(targets, mix.lam), ({t: v[mix.perm] for t, v in targets.items()}, 1 - mix.lam)]
