"""Face alignment and cropping."""

from facelab.align.crop import center_crop, crop_box, expand_box

__all__ = ["center_crop", "crop_box", "expand_box"]
