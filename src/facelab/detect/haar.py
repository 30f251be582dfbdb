"""OpenCV Haar cascade (Viola-Jones): the fast last resort. Needs OpenCV 4.x (5.0 dropped it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from facelab.detect.base import Detector, register_detector
from facelab.errors import WeightsError
from facelab.types import Face


@register_detector("haar")
class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade; no landmarks.

    Options:
        cascade: file name in ``cv2.data.haarcascades`` or a path
            (default haarcascade_frontalface_default.xml).
        scale_factor, min_neighbors, min_size: ``detectMultiScale`` settings.

    Example:
        >>> HaarDetector().detect(np.zeros((80, 80, 3), np.uint8))
        []
    """

    def __init__(
        self,
        name: str = "haar",
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 20,
    ) -> None:
        super().__init__(
            name=name, cascade=cascade, scale_factor=scale_factor,
            min_neighbors=min_neighbors, min_size=min_size,
        )  # fmt: skip

    def _load(self) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise WeightsError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.0); "
                "install opencv-python-headless<5"
            )
        path = Path(self.options["cascade"])
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / self.options["cascade"]
        clf = cv2.CascadeClassifier(str(path))
        if not path.is_file() or clf.empty():
            raise WeightsError(f"Haar cascade {path} missing or unreadable; pass cascade=<file>")
        self._cv2, self._clf = cv2, clf

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        o = self.options
        rects, _, weights = self._clf.detectMultiScale3(
            gray, scaleFactor=o["scale_factor"], minNeighbors=o["min_neighbors"],
            minSize=(o["min_size"], o["min_size"]), outputRejectLevels=True,
        )  # fmt: skip
        faces = []
        for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights)):
            score = 1.0 / (1.0 + math.exp(-float(s)))
            faces.append(Face(box=(float(x), float(y), float(x + w), float(y + h)), score=score))
        return faces
