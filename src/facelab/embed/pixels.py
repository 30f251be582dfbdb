"""A tiny, dependency-free baseline embedder: the face crop as a normalised 8x16 thumbnail.

It recognises nobody reliably; it exists so the database, ingest and index can be exercised
quickly (tests, dry runs) without loading a neural network. Deterministic and fast.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facelab.align.crop import crop_box
from facelab.embed.base import l2_normalize, register_embedder
from facelab.types import Face


class PixelEmbedder:
    """Grey 16x8 thumbnail of each face box, mean-removed and L2-normalised (128-d, cosine).

    Example:
        >>> e = PixelEmbedder()
        >>> e.embed_faces(np.zeros((20, 20, 3), np.uint8), [Face((0, 0, 20, 20))]).shape
        (1, 128)
    """

    name = "pixels"
    version = "1"
    dim = 128
    metric = "cosine"
    threshold = 0.1

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        out = np.zeros((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            crop = crop_box(image, face.box, square=False)
            grey = Image.fromarray(crop).convert("L").resize((8, 16), Image.BILINEAR)
            v = np.asarray(grey, np.float32).ravel()
            v = v - v.mean()
            if not np.any(v):
                v = np.ones_like(v)
            out[i] = v
        return l2_normalize(out)


@register_embedder("pixels")
def _make(**_: object) -> PixelEmbedder:
    return PixelEmbedder()
