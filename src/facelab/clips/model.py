"""Clip classifiers: a 2D backbone per frame with scores averaged over frames (one frame is
the single-frame model, K frames TSN-style), a torchvision 3D ResNet from scratch, or the 2D
backbone inflated to 3D with its ImageNet weights (I3D-style, facelab.clips.inflate)."""

from __future__ import annotations

import torch
from torch import nn

from facelab.clips.config import ClipModelConfig
from facelab.clips.inflate import inflate
from facelab.models.backbone import create_backbone
from facelab.models.weights import IMAGENET_MEAN, IMAGENET_STD


class ClipModel(nn.Module):
    """uint8-derived float clips (B, T, 3, H, W) in [0, 1] -> class logits (B, C).

    Example:
        >>> m = ClipModel(ClipModelConfig(pretrained="", freeze=0), 2).eval()
        >>> m(torch.rand(2, 3, 3, 32, 32)).shape
        torch.Size([2, 2])
    """

    def __init__(self, cfg: ClipModelConfig, n_classes: int):
        super().__init__()
        self.kind = cfg.kind
        if cfg.kind in ("2d", "i3d"):
            self.backbone = create_backbone(cfg.backbone, cfg.pretrained)
            if cfg.kind == "i3d":
                inflate(self.backbone.body, cfg.time_kernel)  # before freeze: it swaps modules
            if cfg.freeze:
                self.backbone.freeze(cfg.freeze)
            mean, std = self.backbone.mean, self.backbone.std
            self.head = nn.Sequential(nn.Dropout(cfg.dropout),
                                      nn.Linear(self.backbone.num_features, n_classes))
        else:
            import torchvision.models.video as tvv

            self.net = getattr(tvv, cfg.arch3d)(weights=None)
            self.net.fc = nn.Sequential(nn.Dropout(cfg.dropout),
                                        nn.Linear(self.net.fc.in_features, n_classes))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        b, t = x.shape[:2]
        if self.kind == "2d":
            logits = self.head(self.backbone(x.flatten(0, 1)))
            return logits.view(b, t, -1).mean(1)  # TSN: average of per-frame scores
        x = x.permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, H, W)
        return self.head(self.backbone(x)) if self.kind == "i3d" else self.net(x)

    @property
    def n_classes(self) -> int:
        return (self.net.fc if self.kind == "3d" else self.head)[-1].out_features
