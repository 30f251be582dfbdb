"""Small value types shared across facelab: boxes, landmarks and detected faces.

Conventions: boxes are (x1, y1, x2, y2) floats in pixel coordinates; images at the API are
RGB uint8 arrays of shape (H, W, 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (x1, y1, x2, y2) in pixels of the source image.
        score: detector confidence in [0, 1].
        landmarks: (5, 2) float array (left eye, right eye, nose, left mouth, right mouth)
            in image coordinates, or None when the backend has none.
        stage: which detector (or fallback) produced it, e.g. "mtcnn" or "fallback:center".
        extra: backend-specific fields (e.g. 68-point landmarks).

    Example:
        >>> Face(box=(10.0, 10.0, 50.0, 60.0), score=0.99).width
        40.0
    """

    box: Box
    score: float = 1.0
    landmarks: np.ndarray | None = None
    stage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])
