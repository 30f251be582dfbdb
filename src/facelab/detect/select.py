"""Choosing faces among detections: one vocabulary for the whole package.

- ``largest``: the biggest box.
- ``central``: box area discounted by the distance of its centre from the image centre
  (portrait-style photos where the subject is centred and a bystander may be larger).
- ``score``: the most confident detection.
- ``all``: every face, ordered largest first.
"""

from __future__ import annotations

import numpy as np

from facelab.errors import ConfigError
from facelab.types import Face

CHOICES = ("largest", "central", "score", "all")


def check_choice(choose: str) -> str:
    if choose not in CHOICES:
        raise ConfigError(f"face choice {choose!r} unknown; use one of {CHOICES}")
    return choose


def face_rank(face: Face, shape: tuple, choose: str = "largest") -> float:
    """Ranking key of a face under `choose` (higher = more likely "the" face of the photo).

    Example:
        >>> face_rank(Face((0.0, 0.0, 10.0, 10.0)), (100, 100, 3))
        100.0
    """
    if choose == "score":
        return float(face.score)
    area = face.width * face.height
    if choose != "central":
        return area
    h, w = shape[:2]
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    off = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
    return area * float(np.exp(-((off / 0.15) ** 2)))


def rank_faces(faces: list[Face], shape: tuple, choose: str = "largest") -> list[Face]:
    """Faces sorted by :func:`face_rank`, best first ("all" ranks by size)."""
    key = "largest" if choose == "all" else check_choice(choose)
    return sorted(faces, key=lambda f: face_rank(f, shape, key), reverse=True)


def select_faces(faces: list[Face], shape: tuple, choose: str = "largest") -> list[Face]:
    """The chosen face (a one-item list), or every face ranked for "all"; [] when none.

    Example:
        >>> a, b = Face((0.0, 0.0, 10.0, 10.0)), Face((40.0, 40.0, 60.0, 60.0), score=0.5)
        >>> select_faces([a, b], (100, 100, 3), "largest")[0] is b
        True
    """
    ranked = rank_faces(faces, shape, choose)
    return ranked if choose == "all" else ranked[:1]
