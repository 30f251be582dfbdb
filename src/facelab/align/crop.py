"""Cropping a face box out of an image: margins, square boxes, padding beyond the border."""

from __future__ import annotations

import numpy as np

from facelab.errors import DataFormatError
from facelab.types import Box


def expand_box(box: Box, margin: float = 0.0, square: bool = True) -> Box:
    """Grow a box by `margin` (fraction of its size on each side), optionally to a square.

    Example:
        >>> expand_box((10, 10, 30, 50), margin=0.0, square=True)
        (0.0, 10.0, 40.0, 50.0)
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if square:
        w = h = max(w, h)
    w, h = w * (1 + 2 * margin), h * (1 + 2 * margin)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def usable_box(box: Box, shape: tuple[int, int], name: str = "<image>") -> Box:
    """Check a face box against its image: finite, non-empty, overlapping the image. A box far
    larger than the image is clipped to it (padding it would allocate without bound).

    Raises:
        DataFormatError: the box is not finite, empty, or lies outside the image.

    Example:
        >>> usable_box((0, 0, 1e6, 1e6), (100, 80))
        (0.0, 0.0, 80.0, 100.0)
    """
    h, w = shape
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataFormatError(f"{name}: face box {box} is not finite; fix the box columns")
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise DataFormatError(f"{name}: face box {box} is empty (x2 <= x1 or y2 <= y1)")
    if min(x2, w) - max(x1, 0) < 1 or min(y2, h) - max(y1, 0) < 1:
        raise DataFormatError(f"{name}: face box {box} lies outside the {w}x{h} image")
    if max(x2 - x1, y2 - y1) > 4 * max(h, w):
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    return (x1, y1, x2, y2)


def crop_box(
    image: np.ndarray,
    box: Box,
    *,
    margin: float = 0.0,
    square: bool = True,
    fill: str = "edge",
) -> np.ndarray:
    """Cut `box` (grown by `margin`, squared) out of an RGB image, padding outside the border.

    Args:
        image: RGB uint8 (H, W, 3).
        box: (x1, y1, x2, y2) pixels.
        margin: extra context on each side as a fraction of the box size (0.2 = 20%).
        square: make the crop square around the box centre (keeps the face's aspect ratio
            when resized).
        fill: "edge" repeats border pixels, "constant" pads with black.

    Example:
        >>> crop_box(np.zeros((100, 100, 3), np.uint8), (90, 90, 110, 110)).shape
        (20, 20, 3)
    """
    x1, y1, x2, y2 = expand_box(box, margin, square)
    x1, y1 = int(np.floor(x1)), int(np.floor(y1))
    x2, y2 = max(int(np.ceil(x2)), x1 + 1), max(int(np.ceil(y2)), y1 + 1)
    h, w = image.shape[:2]
    pad = (max(0, -y1), max(0, y2 - h), max(0, -x1), max(0, x2 - w))
    inner = image[max(0, y1) : min(h, y2), max(0, x1) : min(w, x2)]
    if inner.size == 0:  # box entirely outside the image
        return np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
    if any(pad):
        mode = "edge" if fill == "edge" else "constant"
        inner = np.pad(inner, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)), mode=mode)
    return np.ascontiguousarray(inner)


def center_crop(image: np.ndarray, fraction: float = 0.8) -> np.ndarray:
    """The centred square covering `fraction` of the shorter side (a fallback when no face is found)."""
    h, w = image.shape[:2]
    side = max(1, int(min(h, w) * fraction))
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(image[y : y + side, x : x + side])
