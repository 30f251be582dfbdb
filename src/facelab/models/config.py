"""Backbone and head settings: the model half of a run's config."""

from __future__ import annotations

from dataclasses import dataclass

from facelab.errors import ConfigError


@dataclass
class ModelConfig:
    """Backbone and head.

    Attributes:
        backbone: torchvision name (mobilenet_v2, resnet18, ...) or timm:<name>.
        pretrained: '' | 'imagenet' (offline package) | file path | 'hub'.
        head: multitask | flat18.
        dropout: dropout before the head.
        freeze: leading backbone stages kept fixed (weights and BatchNorm statistics);
            0 trains everything. 4 on MobileNetV2 trains ~1.7x faster on CPU.
        margin: none | arcface | cosface. With a margin the head (multitask or flat18) is a
            cosine classifier: logits = margin_scale * cos(features, class weights), and in
            training each known target logit becomes s*cos(theta + m) (arcface) or
            s*(cos(theta) - m) (cosface).
        margin_scale: s, the logit scale of the cosine head.
        margin_m: m; null = 0.5 for arcface, 0.35 for cosface.
    """

    backbone: str = "mobilenet_v2"
    pretrained: str = "imagenet"
    head: str = "multitask"
    dropout: float = 0.2
    freeze: int = 0
    margin: str = "none"
    margin_scale: float = 30.0
    margin_m: float | None = None

    def __post_init__(self) -> None:
        from facelab.models.heads import MARGINS

        if self.margin not in MARGINS:
            raise ConfigError(f"model.margin {self.margin!r} unknown; use one of {MARGINS}")
        if self.margin_scale <= 0:
            raise ConfigError(f"model.margin_scale must be > 0, got {self.margin_scale}")
        if self.margin_m is not None:
            import math

            top = math.pi / 2 if self.margin == "arcface" else float("inf")
            if not 0 <= self.margin_m < top:
                raise ConfigError(f"model.margin_m={self.margin_m} out of range for {self.margin}: "
                                  "use 0 <= m < pi/2 for arcface (0.5 is usual), m >= 0 for cosface")

    def build(self, pretrained: str | None = None):
        """The AttributeModel these settings describe (`pretrained` overrides the weights,
        e.g. "" when a checkpoint's weights are loaded next).

        Example:
            >>> m = ModelConfig("mobilenet_v2", "", margin="arcface").build()
            >>> type(m.head).__name__
            'MarginHead'
        """
        from facelab.models.heads import create_head
        from facelab.models.model import AttributeModel

        model = AttributeModel(self.backbone, self.pretrained if pretrained is None else pretrained,
                               self.head, self.dropout, self.freeze)
        if self.margin != "none":  # AttributeModel builds plain heads; swap in the cosine head
            model.head = create_head(self.head, model.backbone.num_features, self.dropout,
                                     self.margin, self.margin_scale, self.margin_m)
        return model
