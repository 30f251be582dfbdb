"""Robust image decoding: every file becomes an RGB uint8 (H, W, 3) array or a clear error.

Handles EXIF orientation, alpha (composited on white), palette, CMYK, grayscale, 16-bit and
float images; truncated, empty, huge or non-image files raise :class:`ImageDecodeError`
naming the file and what to do.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facelab.errors import ImageDecodeError

# Above this many pixels a file is refused (decompression-bomb guard); 100 MP covers any photo.
DEFAULT_MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on white so transparent areas stay neutral."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        else:
            arr = arr / hi * 255.0
        gray = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _open(source: str | Path | bytes | BinaryIO, name: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageDecodeError(f"{name}: empty data; send the image file's bytes")
        return Image.open(io.BytesIO(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageDecodeError(f"{path}: file not found; check the path")
        if path.is_dir():
            raise ImageDecodeError(f"{path}: is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes); re-download or remove it")
        return Image.open(path)
    return Image.open(source)


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    max_side: int | None = None,
    allow_truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an image file (or bytes) into an upright RGB uint8 array of shape (H, W, 3).

    Args:
        source: a path, raw bytes or a binary file object.
        max_side: if set, JPEGs are decoded at reduced scale (DCT draft mode, much faster)
            so that the longer side stays >= max_side; the result is not resized further.
        allow_truncated: decode what is there of a truncated file instead of raising.
        max_pixels: refuse larger images (decompression-bomb guard).

    Returns:
        The image as an RGB uint8 array, EXIF orientation applied.

    Raises:
        ImageDecodeError: the file is missing, empty, not an image, truncated, or too large.

    Example:
        >>> arr = load_image("face.png")  # doctest: +SKIP
        >>> arr.shape[-1], arr.dtype
        (3, dtype('uint8'))
    """
    name = str(source) if isinstance(source, (str, Path)) else "<image bytes>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(source, name)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels}; "
                    "downscale the image or raise max_pixels"
                )
            if max_side and img.format == "JPEG" and max(w, h) > 2 * max_side:
                scale = max_side / max(w, h)
                img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{name}: not a recognised image format; remove the file or convert it to JPEG/PNG"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: image too large ({exc}); downscale it first") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        hint = (
            "the file is truncated; re-download it, or pass allow_truncated=True"
            if "truncated" in str(exc).lower()
            else "the file is corrupt; re-export or remove it"
        )
        raise ImageDecodeError(f"{name}: cannot decode ({exc}); {hint}") from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(f"{name}: decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def is_image_file(path: str | Path) -> bool:
    """True when the file name has a known image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
