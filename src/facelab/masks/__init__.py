"""Procedural face masks and accessories (surgical, KN95, N95, cloth; sunglasses, eyeglasses,
caps, scarves) anchored on facial landmarks, and the competition layout built from them.

Example:
    >>> from facelab.masks import render, detect_landmarks68
    >>> out = render(img, detect_landmarks68(img), kind="surgical", wear="correct")  # doctest: +SKIP
"""

from facelab.masks.landmarks import MEAN_SHAPE68, LandmarksError, detect_landmarks68, to68
from facelab.masks.render import MaskRenderer, RenderSpec, render, render_spec
from facelab.masks.shapes import ACCESSORIES, INCORRECT_WEARS, MASK_KINDS, WEARS

__all__ = [
    "ACCESSORIES", "INCORRECT_WEARS", "MASK_KINDS", "MEAN_SHAPE68", "WEARS", "LandmarksError",
    "MaskRenderer", "RenderSpec", "detect_landmarks68", "render", "render_spec", "to68",
]
