"""Facial landmarks for the renderer: dlib's 68 points, or 68 points fitted from 5.

The renderer anchors every shape on dlib's 68-point layout (jaw 0-16, brows 17-26, nose
27-35, eyes 36-47, mouth 48-67). When only a detector's 5 points are known (ArcFace order:
left eye, right eye, nose tip, left mouth corner, right mouth corner), a mean 68-point face
is placed on them by a similarity fit (:func:`to68`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from facelab.align.align import estimate_similarity
from facelab.detect.dlib_backend import five_from_68
from facelab.errors import FacelabError

#: Mean dlib 68-point shape in the ArcFace 112x112 frame: dlib's 68-point predictor on 396
#: UTKFace faces (HOG detector, one face each), each shape similarity-aligned by its own
#: 5 points (eye centres, nose tip 30, mouth corners 48/54) to the ArcFace 112 template.
MEAN_SHAPE68 = np.array([
    [15.5, 55.1], [15.9, 65.7], [17.1, 76.1], [19.0, 86.5],
    [22.7, 96.3], [28.9, 104.6], [36.9, 111.3], [45.9, 116.4],
    [56.3, 117.8], [66.8, 116.4], [76.0, 111.4], [84.2, 104.8],
    [90.5, 96.4], [94.3, 86.6], [96.1, 76.0], [97.2, 65.4],
    [97.7, 54.6], [22.2, 46.4], [27.2, 41.6], [34.3, 40.0],
    [41.7, 40.9], [48.6, 43.6], [62.9, 43.5], [69.9, 40.6],
    [77.4, 39.7], [84.7, 41.3], [89.9, 46.1], [55.8, 52.3],
    [55.8, 59.1], [55.7, 65.9], [55.7, 72.9], [47.6, 77.7],
    [51.6, 79.1], [55.9, 80.3], [60.2, 79.1], [64.3, 77.7],
    [30.6, 53.6], [35.1, 50.9], [40.4, 51.0], [45.1, 54.6],
    [40.1, 55.4], [34.8, 55.3], [66.9, 54.5], [71.5, 50.9],
    [76.9, 50.8], [81.5, 53.5], [77.2, 55.2], [71.9, 55.3],
    [39.3, 89.9], [45.4, 87.8], [51.5, 86.7], [56.0, 87.7],
    [60.4, 86.7], [66.7, 87.7], [73.2, 89.8], [67.0, 95.6],
    [60.8, 98.2], [56.0, 98.7], [51.2, 98.2], [45.2, 95.7],
    [41.7, 90.3], [51.5, 90.0], [56.0, 90.5], [60.5, 90.0],
    [70.8, 90.2], [60.6, 93.3], [56.0, 93.8], [51.4, 93.3],
], dtype=np.float64)


class LandmarksError(FacelabError):
    """Landmarks are missing, of the wrong shape, or could not be found on a face."""


def to68(landmarks: Any) -> np.ndarray:
    """A (68, 2) float array from 68 points, 5 ArcFace-order points or a detected ``Face``.

    A ``facelab.types.Face`` gives its ``extra["landmarks68"]`` when the detector had them,
    else its 5 landmarks. Five points get the mean shape placed on them by a similarity fit.

    Raises:
        LandmarksError: no landmarks, a shape other than (68, 2) or (5, 2), or non-finite values.

    Example:
        >>> to68(five_from_68(MEAN_SHAPE68)).shape
        (68, 2)
    """
    if landmarks is not None and hasattr(landmarks, "box") and hasattr(landmarks, "extra"):
        face = landmarks
        landmarks = face.extra.get("landmarks68")
        if landmarks is None:
            landmarks = face.landmarks
        if landmarks is None:
            raise LandmarksError(
                f"face at box {tuple(round(v, 1) for v in face.box)} has no landmarks; use a "
                "detector that gives them (mtcnn, dlib-hog) or call detect_landmarks68()"
            )
    if landmarks is None:
        raise LandmarksError(
            "no landmarks given: pass dlib's 68 points or the detector's 5 points as an (N, 2) "
            "array, or find them with facelab.masks.detect_landmarks68(image)"
        )
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape not in ((68, 2), (5, 2)):
        raise LandmarksError(
            f"landmarks must be a (68, 2) or (5, 2) array of (x, y) pixels, got shape {pts.shape}"
        )
    if not np.isfinite(pts).all():
        raise LandmarksError("landmarks contain NaN or infinite values")
    if pts.shape[0] == 68:
        return pts.copy()
    if np.linalg.norm(pts[1] - pts[0]) < 1e-6:
        raise LandmarksError("the two eye landmarks coincide; the 5 points are degenerate")
    m = estimate_similarity(five_from_68(MEAN_SHAPE68), pts)
    return MEAN_SHAPE68 @ m[:, :2].T + m[:, 2]


_DLIB: dict[str, Any] = {}
_DLIB_LOCK = threading.Lock()


def _dlib_models() -> tuple[Any, Any]:
    with _DLIB_LOCK:
        if not _DLIB:
            import dlib

            from facelab.embed.weights import dlib_model_path

            _DLIB["det"] = dlib.get_frontal_face_detector()
            _DLIB["sp"] = dlib.shape_predictor(str(dlib_model_path("shape68")))
            _DLIB["rect"] = dlib.rectangle
    return _DLIB["det"], _DLIB["sp"]


def detect_landmarks68(image: np.ndarray, box: Any = None, upsample: int = 0) -> np.ndarray:
    """dlib's 68 landmarks of the largest face in an RGB image (or of the face in ``box``).

    The shape predictor comes from the installed ``face-recognition-models`` package (see
    :func:`facelab.embed.weights.dlib_model_path`); nothing is downloaded.

    Raises:
        LandmarksError: dlib's HOG detector found no face and no box was given.
        WeightsError: the dlib model file is not installed.

    Example:
        >>> detect_landmarks68(photo)  # doctest: +SKIP
    """
    det, sp = _dlib_models()
    img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    if box is None:
        rects = det(img, upsample)
        if not len(rects):
            raise LandmarksError(
                f"dlib found no face in the {img.shape[1]}x{img.shape[0]} image; pass a face "
                "box, or 5/68 landmarks from another detector"
            )
        rect = max(rects, key=lambda r: r.width() * r.height())
    else:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        rect = _DLIB["rect"](x1, y1, x2, y2)
    shape = sp(img, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
