"""The face attribute model: backbone + head, with its preprocessing recorded."""

from __future__ import annotations

import torch
from torch import nn

from facelab.models.backbone import create_backbone
from facelab.models.heads import create_head


class AttributeModel(nn.Module):
    """Backbone features -> task logits. Input: float images (B, 3, H, W) in [0, 1].

    Normalisation happens inside the model, so callers feed plain [0, 1] pixels and the
    preprocessing travels with the checkpoint.

    Example:
        >>> m = AttributeModel("mobilenet_v2", pretrained="", head="multitask")
        >>> sorted(m(torch.rand(2, 3, 64, 64)))
        ['age', 'gender', 'mask']
    """

    def __init__(self, backbone: str = "mobilenet_v2", pretrained: str = "imagenet",
                 head: str = "multitask", dropout: float = 0.2, freeze: int = 0):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained)
        if freeze:
            self.backbone.freeze(freeze)
        self.head = create_head(head, self.backbone.num_features, dropout)
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.features(x))
