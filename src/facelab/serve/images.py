"""Checks on image bytes that arrive over HTTP, before any pixel is decoded.

* the declared content type must be an image type (415 otherwise);
* the first bytes must be a JPEG, PNG, GIF, BMP, WebP or TIFF signature (415 otherwise);
* the header's width x height must be within the pixel limit (413 otherwise): PIL reads only
  the header here, so a small file that would decode to gigabytes (a decompression bomb) is
  refused without decoding it;
* then facelab.io.image.load_image decodes it (EXIF rotation, alpha, CMYK, ...), with the
  same pixel limit, or raises a one-line ImageDecodeError (422).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from facelab.collect.fetch import sniff_extension
from facelab.errors import FacelabError, ImageDecodeError
from facelab.io.image import load_image

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO")


class UnsupportedMediaType(FacelabError):
    """The request or an uploaded part is not an image (HTTP 415)."""


class TooLargeImage(FacelabError):
    """An image over the byte or pixel limit (HTTP 413)."""


def image_kind(head: bytes) -> str | None:
    """The file extension an image's first bytes show, or None (not an image we take).

    Example:
        >>> image_kind(b"II*\\x00....")
        '.tif'
    """
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return sniff_extension(head)


def _check_declared_type(content_type: str | None, what: str, prefix: str, noun: str,
                         send: str) -> None:
    """415 unless the declared type starts with `prefix` (or is absent / octet-stream)."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct and ct != "application/octet-stream" and not ct.startswith(prefix):
        raise UnsupportedMediaType(f"{what}: content type {ct!r} is not {noun}; send {send}")


def check_content_type(content_type: str | None, what: str) -> None:
    """415 unless the declared type is image/* (or absent / application/octet-stream)."""
    _check_declared_type(content_type, what, "image/", "an image",
                         "a JPEG, PNG, WebP, GIF, BMP or TIFF file")


def check_video_content_type(content_type: str | None, what: str) -> None:
    """415 unless the declared type is video/* (or absent / application/octet-stream)."""
    _check_declared_type(content_type, what, "video/", "a video", "an MP4, AVI, MKV or WebM file")


def check_image_bytes(data: bytes, what: str, max_pixels: int, max_bytes: int | None = None
                      ) -> tuple[int, int]:
    """(width, height) from the header of image bytes, or the error for the first failed check
    (size, signature, header, format, pixel count); decodes no pixel."""
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLargeImage(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data:
        raise ImageDecodeError(f"{what}: empty file; send the image's bytes")
    if image_kind(data[:16]) is None:
        raise UnsupportedMediaType(f"{what}: not an image (unknown signature); send a JPEG, PNG, "
                                   "WebP, GIF, BMP or TIFF file")
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # lazy: parses the header only
                w, h = img.size
                fmt = img.format
    except Image.DecompressionBombError:
        raise TooLargeImage(f"{what}: image dimensions over Pillow's safety limit; refused "
                            "before decoding") from None
    except Exception as exc:  # noqa: BLE001  (any header parse failure is a bad image)
        raise ImageDecodeError(f"{what}: cannot read the image header ({type(exc).__name__}); "
                               "re-export it as JPEG or PNG") from None
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(f"{what}: {fmt} images are not accepted; send JPEG or PNG")
    if w * h > max_pixels:
        raise TooLargeImage(f"{what}: {w}x{h} pixels exceeds the limit of {max_pixels}; refused "
                            "before decoding; downscale the image")
    return w, h


def decode_upload(data: bytes, what: str, max_pixels: int, max_bytes: int | None = None
                  ) -> np.ndarray:
    """RGB uint8 (H, W, 3) of uploaded image bytes, after the checks in the module docstring."""
    check_image_bytes(data, what, max_pixels, max_bytes)
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(str(exc).replace("<image bytes>", what)) from None
