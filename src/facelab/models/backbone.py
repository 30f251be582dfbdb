"""Backbones by name: torchvision or timm models turned into feature extractors.

Names: "mobilenet_v2", "resnet18", ... (torchvision), or "timm:<name>" for any timm model.
`pretrained` is "" (random init), a known offline name ("imagenet" where the weights ship
in a package), a local file path, or "hub" to download (fails clearly offline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from facelab.errors import ConfigError, WeightsError
from facelab.models.weights import IMAGENET_MEAN, IMAGENET_STD, KNOWN_WEIGHTS, load_state_dict

log = logging.getLogger(__name__)


class Backbone(nn.Module):
    """A feature extractor: images (B, 3, H, W) -> features (B, num_features).

    Attributes:
        num_features: size of the pooled feature vector.
        mean, std: the input normalisation its weights expect.
    """

    def __init__(self, body: nn.Module, num_features: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        """The body's blocks in input-to-output order (what `freeze` counts)."""
        if hasattr(self.body, "stages") and hasattr(self.body, "stem"):  # timm convnets
            return [self.body.stem, *self.body.stages]
        if hasattr(self.body, "conv_stem") and hasattr(self.body, "blocks"):  # timm efficientnet
            return [self.body.conv_stem, self.body.bn1, *self.body.blocks]
        first = next(iter(self.body.children()))
        if isinstance(self.body, nn.Sequential) and isinstance(first, nn.Sequential):
            return list(first.children())  # torchvision features + pool (mobilenet, efficientnet)
        return list(self.body.children())  # torchvision resnet: conv1, bn1, relu, maxpool, layer1..

    def freeze(self, n: int) -> None:
        """Freeze the first `n` stages: no gradients and fixed BatchNorm statistics.

        The early, high-resolution blocks hold generic edge/texture filters and cost most of
        the backward pass; freezing 4 MobileNetV2 blocks trains ~1.7-1.9x faster on CPU.
        """
        stages = self.stages()
        if n > len(stages):
            raise ConfigError(f"model.freeze={n} but the backbone has only {len(stages)} stages")
        self._frozen = stages[:n]
        for module in self._frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # keep ImageNet BatchNorm statistics in frozen blocks
        return self


def _torchvision_body(name: str, pretrained: str) -> tuple[nn.Module, int]:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise ConfigError(f"unknown torchvision model {name!r}; e.g. mobilenet_v2, resnet18, "
                          "or use 'timm:<name>' for timm models")
    weights_arg = None
    if pretrained == "hub":
        weights_arg = "DEFAULT"
    try:
        model = tvm.get_model(name, weights=weights_arg)
    except Exception as exc:  # URLError, HTTPError, ... when offline
        raise WeightsError(
            f"could not download torchvision weights for {name} ({exc}); offline? "
            "pass a local .pth file as pretrained instead"
        ) from exc
    if pretrained and pretrained != "hub":
        known = KNOWN_WEIGHTS.get((name, pretrained))
        state = load_state_dict(known.path(), known.sha256) if known else _local(pretrained, name)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > 2 or unexpected:
            raise WeightsError(
                f"weights {pretrained!r} do not fit {name}: {len(missing)} missing keys "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
    # Strip the classifier: keep features + global pooling.
    if hasattr(model, "classifier") and hasattr(model, "features"):
        last = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)][0]
        body = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return body, last.in_features
    if hasattr(model, "fc"):
        n = model.fc.in_features
        model.fc = nn.Identity()
        return model, n
    raise ConfigError(f"torchvision model {name} has no classifier/fc to strip; use timm:<name>")


def _local(pretrained: str, name: str) -> dict:
    path = Path(pretrained).expanduser()
    if not path.suffix and not path.exists():
        known = sorted(w for a, w in KNOWN_WEIGHTS if a == name)
        raise WeightsError(
            f"pretrained={pretrained!r} is neither a file nor a known offline weight set for "
            f"{name} (known: {known or 'none'}); pass a .pth path, 'hub' (online), or ''"
        )
    return load_state_dict(path)


def _timm_body(name: str, pretrained: str) -> tuple[nn.Module, int, tuple, tuple]:
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained == "hub", num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown timm model {name!r}; see timm.list_models()") from exc
        raise WeightsError(f"could not fetch timm weights for {name} ({exc}); offline? "
                           "pass a local file as pretrained") from exc
    except OSError as exc:
        raise WeightsError(f"could not fetch timm weights for {name} ({exc}); offline? "
                           "pass a local file as pretrained") from exc
    if pretrained and pretrained != "hub":
        missing, _ = model.load_state_dict(_local(pretrained, name), strict=False)
        if len(missing) > len(model.state_dict()) // 2:
            raise WeightsError(f"weights {pretrained!r} do not fit timm model {name}: "
                               f"{len(missing)} keys missing, e.g. {missing[:2]}")
    cfg = model.pretrained_cfg or {}
    return model, model.num_features, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)


def create_backbone(name: str, pretrained: str = "imagenet") -> Backbone:
    """Build a backbone by name with pretrained weights from a package, a file or a hub.

    Example:
        >>> bb = create_backbone("mobilenet_v2", "imagenet")  # offline, from the weight package
        >>> bb.num_features
        1280
    """
    if name.startswith("timm:"):
        body, n, mean, std = _timm_body(name[5:], pretrained)
        return Backbone(body, n, mean, std)
    body, n = _torchvision_body(name, pretrained)
    return Backbone(body, n)
