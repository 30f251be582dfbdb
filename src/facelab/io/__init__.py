"""Robust decoding of images (and, later, video frames)."""

from facelab.io.image import IMAGE_EXTENSIONS, is_image_file, load_image

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "load_image"]
