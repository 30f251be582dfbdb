"""Detector cascades and the face cropper used by training, prediction and the face database.

A spec string names the stages in order, ``>``-separated; each stage is a detector name with
optional ``(key=value, ...)`` options, and the last may be a fallback: ``center`` (centred
square) or ``original`` (the whole image). Example: ``"mtcnn-mask>mtcnn(min_face_size=16)>center"``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facelab.align.align import align_face
from facelab.align.crop import center_crop, crop_box
from facelab.detect.base import Detector, as_rgb, get_detector, register_detector
from facelab.detect.select import CHOICES, select_faces
from facelab.errors import ConfigError
from facelab.types import Face

FALLBACKS = ("center", "original")
_STAGE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\((.*)\))?\s*$")


def _value(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip("'\"")


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: "a=1, b=[1,2]" -> ["a=1", " b=[1,2]"]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_spec(spec: str) -> tuple[list[tuple[str, dict]], str | None]:
    """Split a cascade spec into [(detector, options), ...] and the fallback (or None).

    Example:
        >>> parse_spec("mtcnn(min_face_size=16)>haar>center")
        ([('mtcnn', {'min_face_size': 16}), ('haar', {})], 'center')
    """
    stages, fallback = [], None
    parts = [p for p in spec.split(">")]
    for i, part in enumerate(parts):
        m = _STAGE.match(part)
        if not m:
            raise ConfigError(f"bad cascade stage {part!r} in {spec!r}; e.g. 'mtcnn>haar>center'")
        name, args = m.group(1), m.group(2)
        if name in FALLBACKS:
            if i != len(parts) - 1:
                raise ConfigError(f"fallback {name!r} must be the last stage of {spec!r}")
            fallback = name
            continue
        opts = {}
        for kv in filter(None, (a.strip() for a in _split_top(args or ""))):
            if "=" not in kv:
                raise ConfigError(f"option {kv!r} in {part!r} must look like key=value")
            k, v = kv.split("=", 1)
            opts[k.strip()] = _value(v)
        stages.append((name, opts))
    if not stages and fallback is None:
        raise ConfigError(f"empty cascade spec {spec!r}")
    return stages, fallback


class CascadeDetector(Detector):
    """Detectors tried in order: each image gets the faces of the first stage that finds any
    (``mode="first"``, spec ``"a>b"``), or the union of all stages after NMS
    (``mode="union"``, spec ``"a|b"``).

    Example:
        >>> det = CascadeDetector("mtcnn>haar")
        >>> det.detect(np.zeros((64, 64, 3), np.uint8))
        []
    """

    batched = True

    def __init__(self, spec: str = "mtcnn>haar", mode: str = "first", name: str = "") -> None:
        if "|" in spec:  # "a|b": union of all stages
            mode = "union"
        stages, _ = parse_spec(spec.replace("|", ">"))
        if mode not in ("first", "union"):
            raise ConfigError(f"cascade mode must be 'first' or 'union', got {mode!r}")
        super().__init__(name=name or f"cascade:{spec}", spec=spec, mode=mode)
        self.stages = [get_detector(n, **o) for n, o in stages]

    def config(self) -> dict:
        return {"mode": self.options["mode"], "stages": [d.config() for d in self.stages]}

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        out: list[list[Face]] = [[] for _ in images]
        todo = list(range(len(images)))
        for det in self.stages:
            if not todo:
                break
            found = det.detect_batch([images[i] for i in todo])
            for i, faces in zip(todo, found):
                out[i].extend(faces)
            if self.options["mode"] == "first":
                todo = [i for i in todo if not out[i]]
        if self.options["mode"] == "union":
            out = [_union(faces) for faces in out]
        return out


def detector_from_spec(spec: str) -> Detector:
    """A detector from a spec: "mtcnn", "mtcnn(min_face_size=12)", a cascade "a>b" (first
    stage that finds faces) or a union "a|b".

    Example:
        >>> detector_from_spec("mtcnn(min_face_size=12)").name
        'mtcnn(min_face_size=12)'
    """
    stages, fallback = parse_spec(spec.replace("|", ">"))
    if fallback or not stages:
        raise ConfigError(f"{spec!r}: fallbacks (center/original) apply to cropping, not detection")
    if len(stages) > 1:
        return CascadeDetector(spec, name=spec)
    name, opts = stages[0]
    det = get_detector(name, **opts)
    det.name = spec if opts else name
    return det


def _union(faces: list[Face], iou: float = 0.4) -> list[Face]:
    from facelab.detect.mtcnn import _nms

    if len(faces) < 2:
        return faces
    boxes = np.array([f.box for f in faces], np.float64) - np.array([0, 0, 1, 1])
    keep = _nms(boxes, np.array([f.score for f in faces]), iou)
    return [faces[i] for i in keep]


register_detector("cascade")(CascadeDetector)


@dataclass
class CropResult:
    """What :class:`FaceCropper` returns for one image.

    Attributes:
        crop: RGB uint8 crop of the chosen face (or the fallback crop).
        stage: detector name that produced it, or "fallback:center" / "fallback:original".
        face: the chosen Face, None for a fallback.
        faces: every face kept (several when ``choose="all"``).
        crops: one crop per face in ``faces`` (``crops[0] is crop``).
    """

    crop: np.ndarray
    stage: str
    face: Face | None
    faces: list[Face] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)


class FaceCropper:
    """Detect with a cascade, choose a face, crop it with a margin (or align it), else fall back.

    Args:
        spec: cascade spec, e.g. ``"mtcnn>center"`` or ``"mtcnn-mask>mtcnn>haar>original"``.
        margin: context added on each side, as a fraction of the face box.
        square: square crops around the box centre.
        choose: "largest", "central", "score" or "all" (facelab.detect.select).
        size: resize crops to size x size (None keeps the native size).
        align: warp faces with 5 landmarks to the ArcFace template (``size`` defaults to
            112); faces without landmarks are cropped by box.
        min_score: ignore detections scoring below this.
        min_size: ignore detections narrower than this many pixels.
        center_fraction: side of the "center" fallback as a fraction of the shorter side.

    Example:
        >>> cropper = FaceCropper("mtcnn>center", margin=0.2)
        >>> out = cropper(np.zeros((100, 80, 3), np.uint8))
        >>> out.stage, out.crop.shape
        ('fallback:center', (64, 64, 3))
    """

    def __init__(
        self,
        spec: str = "mtcnn>center",
        margin: float = 0.2,
        square: bool = True,
        choose: str = "largest",
        size: int | None = None,
        align: bool = False,
        min_score: float = 0.0,
        min_size: float = 0.0,
        center_fraction: float = 0.8,
    ) -> None:
        if choose not in CHOICES:
            raise ConfigError(f"choose must be one of {CHOICES}, got {choose!r}")
        if margin < 0 or not 0 < center_fraction <= 1:
            raise ConfigError("margin must be >= 0 and center_fraction in (0, 1]")
        stages, self.fallback = parse_spec(spec)
        self.spec = spec
        self.detectors = [get_detector(n, **o) for n, o in stages]
        self.margin, self.square, self.choose = float(margin), bool(square), choose
        self.size = size if size is None else int(size)
        self.align, self.min_score, self.min_size = bool(align), float(min_score), float(min_size)
        self.center_fraction = float(center_fraction)

    def settings(self) -> dict:
        """Every setting that changes the output pixels."""
        return {
            "detectors": [d.config() for d in self.detectors],
            "fallback": self.fallback,
            "margin": self.margin,
            "square": self.square,
            "choose": self.choose,
            "size": self.size,
            "align": self.align,
            "min_score": self.min_score,
            "min_size": self.min_size,
            "center_fraction": self.center_fraction,
            "version": 1,
        }

    def cache_key(self) -> str:
        """A short hash that changes whenever a pixel-affecting setting changes.

        Example:
            >>> FaceCropper(margin=0.1).cache_key() != FaceCropper(margin=0.2).cache_key()
            True
        """
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def __call__(self, image: np.ndarray) -> CropResult:
        return self.batch([image])[0]

    def batch(self, images: Sequence[np.ndarray]) -> list[CropResult]:
        """Crop several images, running each detector stage batched over the images left."""
        arrays = [as_rgb(im) for im in images]
        found: list[list[Face]] = [[] for _ in arrays]
        todo = list(range(len(arrays)))
        for det in self.detectors:
            if not todo:
                break
            for i, faces in zip(todo, det.detect_batch([arrays[i] for i in todo])):
                found[i] = self._filter(faces)
            todo = [i for i in todo if not found[i]]
        return [self._result(im, faces) for im, faces in zip(arrays, found)]

    def _filter(self, faces: list[Face]) -> list[Face]:
        return [f for f in faces if f.score >= self.min_score and f.width >= self.min_size]

    def _pick(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        if self.choose == "all":  # detection order, as the cascade found them
            return faces
        return select_faces(faces, image.shape, self.choose)

    def _crop_face(self, image: np.ndarray, face: Face) -> np.ndarray:
        if self.align and face.landmarks is not None:
            return align_face(image, face.landmarks, size=self.size or 112)
        crop = crop_box(image, face.box, margin=self.margin, square=self.square)
        return self._resize(crop)

    def _resize(self, crop: np.ndarray) -> np.ndarray:
        if self.size is None or crop.shape[:2] == (self.size, self.size):
            return crop
        import cv2

        h, w = crop.shape[:2]
        interp = cv2.INTER_AREA if max(h, w) > self.size else cv2.INTER_LINEAR
        if self.square or h == w:
            return cv2.resize(crop, (self.size, self.size), interpolation=interp)
        scale = self.size / max(h, w)  # keep aspect: longer side -> size
        dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(crop, dsize, interpolation=interp)

    def _result(self, image: np.ndarray, faces: list[Face]) -> CropResult:
        if faces:
            chosen = self._pick(image, faces)
            crops = [self._crop_face(image, f) for f in chosen]
            return CropResult(crops[0], chosen[0].stage, chosen[0], chosen, crops)
        if self.fallback is None:
            return CropResult(np.zeros((0, 0, 3), np.uint8), "none", None, [], [])
        if self.fallback == "center":
            crop = center_crop(image, self.center_fraction)
        else:
            crop = image
        crop = self._resize(np.ascontiguousarray(crop))
        return CropResult(crop, f"fallback:{self.fallback}", None, [], [crop])
