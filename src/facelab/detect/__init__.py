"""Face detection: several backends behind one interface, and a cropping cascade.

Example:
    >>> from facelab.detect import get_detector
    >>> faces = get_detector("mtcnn").detect(image)  # doctest: +SKIP
"""

from facelab.detect.base import (
    Detector,
    as_rgb,
    available_detectors,
    get_detector,
    register_detector,
)
from facelab.detect.cascade import CascadeDetector, CropResult, FaceCropper
from facelab.detect.select import CHOICES, select_faces

__all__ = ["CHOICES", "CascadeDetector", "CropResult", "Detector", "FaceCropper", "as_rgb",
           "available_detectors", "get_detector", "register_detector", "select_faces"]
