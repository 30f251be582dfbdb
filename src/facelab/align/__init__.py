"""Face alignment and cropping."""

from facelab.align.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    estimate_similarity,
    face_template,
)
from facelab.align.crop import center_crop, crop_box, expand_box

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "align_face",
    "center_crop",
    "crop_box",
    "estimate_similarity",
    "expand_box",
    "face_template",
]
