"""dlib detectors (HOG + linear SVM, and the CNN "mmod" detector) with 5/68-point landmarks.

Weights come from the ``face-recognition-models`` package, located on disk without
importing it (its ``__init__`` needs pkg_resources).
"""

from __future__ import annotations

import math

import numpy as np

from facelab.detect.base import Detector, package_file, register_detector
from facelab.errors import ConfigError
from facelab.types import Face

_PKG = "face_recognition_models"


def _model(name: str) -> str:
    return str(package_file(_PKG, "models", name, pip_name="face-recognition-models"))


def five_from_68(pts: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points (eye centres, nose tip, mouth corners) from dlib's 68 points.

    Example:
        >>> five_from_68(np.arange(136, dtype=float).reshape(68, 2)).shape
        (5, 2)
    """
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(
        np.float64
    )


def five_from_dlib5(pts: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points from dlib's 5-point model (eye corners x2, nose base).

    dlib's 5-point model has no mouth corners: they are placed where the ArcFace template
    puts them after a similarity fit of the eyes and nose (``extra["mouth_estimated"]``).

    Example:
        >>> five_from_dlib5(np.array([[60, 50], [50, 50], [30, 50], [40, 50], [45, 70.]])).shape
        (5, 2)
    """
    from facelab.align.align import ARCFACE_TEMPLATE_112, estimate_similarity

    eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda p: p[0])
    three = np.stack([eyes[0], eyes[1], pts[4]])
    m = estimate_similarity(ARCFACE_TEMPLATE_112[:3], three)
    mouth = ARCFACE_TEMPLATE_112[3:] @ m[:, :2].T + m[:, 2]
    return np.concatenate([three, mouth]).astype(np.float64)


class _DlibBase(Detector):
    def __init__(self, name: str, upsample: int = 1, landmarks: str | None = "68", **kw) -> None:
        if landmarks not in ("68", "5", None, "none"):
            raise ConfigError(f"landmarks must be '68', '5' or None, got {landmarks!r}")
        super().__init__(name=name, upsample=upsample, landmarks=landmarks, **kw)

    def _load_shape(self) -> None:
        import dlib

        self._dlib = dlib
        lm = self.options["landmarks"]
        self._shape = None
        if lm in ("68", "5"):
            self._shape = dlib.shape_predictor(_model(f"shape_predictor_{lm}_face_landmarks.dat"))

    def _face(self, image: np.ndarray, rect, raw_score: float) -> Face:
        h, w = image.shape[:2]
        box = (
            float(max(0, rect.left())), float(max(0, rect.top())),
            float(min(w, rect.right() + 1)), float(min(h, rect.bottom() + 1)),
        )  # fmt: skip
        face = Face(box=box, score=1.0 / (1.0 + math.exp(-raw_score)))
        face.extra["raw_score"] = raw_score
        if self._shape is not None:
            shape = self._shape(image, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            if len(pts) == 68:
                face.landmarks = five_from_68(pts)
                face.extra["landmarks68"] = pts
            else:
                face.landmarks = five_from_dlib5(pts)
                face.extra["landmarks_dlib5"] = pts
                face.extra["mouth_estimated"] = True
        return face


@register_detector("dlib-hog")
class DlibHOG(_DlibBase):
    """dlib's HOG + linear SVM frontal face detector.

    Options: ``upsample`` (pyramid up-sampling, finds smaller faces), ``landmarks``
    ("68", "5" or None), ``threshold`` (SVM margin, default 0).

    Example:
        >>> DlibHOG().detect(np.zeros((80, 80, 3), np.uint8))
        []
    """

    def __init__(self, name: str = "dlib-hog", threshold: float = 0.0, **kw) -> None:
        super().__init__(name=name, threshold=threshold, **kw)

    def _load(self) -> None:
        self._load_shape()
        self._det = self._dlib.get_frontal_face_detector()

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        rects, scores, _ = self._det.run(image, self.options["upsample"], self.options["threshold"])
        return [self._face(image, r, float(s)) for r, s in zip(rects, scores)]


@register_detector("dlib-cnn")
class DlibCNN(_DlibBase):
    """dlib's CNN (max-margin object detection) face detector; batched for equal-size images.

    Example:
        >>> DlibCNN(upsample=0).detect(np.zeros((80, 80, 3), np.uint8))
        []
    """

    batched = True

    def __init__(self, name: str = "dlib-cnn", batch_size: int = 8, **kw) -> None:
        super().__init__(name=name, batch_size=batch_size, **kw)

    def config(self) -> dict:
        cfg = super().config()
        cfg.pop("batch_size", None)
        return cfg

    def _load(self) -> None:
        self._load_shape()
        self._det = self._dlib.cnn_face_detection_model_v1(_model("mmod_human_face_detector.dat"))

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        up = self.options["upsample"]
        out: list[list[Face]] = [[] for _ in images]
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            if len(idx) == 1:
                results = [self._det(images[idx[0]], up)]
            else:
                results = self._det(
                    [images[i] for i in idx], up, batch_size=self.options["batch_size"]
                )
            for i, dets in zip(idx, results):
                out[i] = [self._face(images[i], d.rect, float(d.confidence)) for d in dets]
        return out
