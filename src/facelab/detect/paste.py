"""Single-face photos as cheap extra supervision for the detector (issue 17, item 2).

Photo sets such as ``lfw-train`` have one face per photo and no boxes. A teacher detector
(MTCNN, which also gives the 5 landmarks) labels them; only photos where it finds exactly
one confident face, and nothing else, are kept, so an unlabelled second face never becomes a
false "background" target. The kept faces serve twice in ``detect-train --arch ssd-mbv2``:

- **whole photos** join the training images (close-up framing, unlike the crowd scenes);
- **copy-paste**: the face with some context is cut out with a soft elliptical edge and
  pasted into crowd-scene crops at a random size and place, optionally with a rendered mask
  (``facelab.masks``), so small unmasked and masked faces get many more examples.

The photo folders are other data sets than the boxes CSV, so they cannot leak its test
split; RMFD and UTKFace, which ``detect-eval --photos`` scores, are not meant to be passed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: teacher cache columns: photo path, face box, score, 5 landmarks (NaN row = rejected photo).
_LM = [f"lm{i}_{a}" for i in range(5) for a in "xy"]
_COLS = ["path", "x1", "y1", "x2", "y2", "score", *_LM]


@dataclass
class FacePatch:
    """A face cut out of a photo with context: pixels, the face box and 5 landmarks in the
    patch's coordinates."""

    pixels: np.ndarray
    box: np.ndarray
    marks: np.ndarray


def list_photos(folders, limit: int = 0) -> list[Path]:
    """Image files under each folder, sorted; ``limit`` evenly spaced ones per folder (0 = all).

    Example:
        >>> list_photos([])
        []
    """
    from facelab.detect.evaluate import sample_photos

    out: list[Path] = []
    for folder in folders:
        out += [Path(p) for p in sample_photos(Path(folder), limit)]
    return out


def teacher_labels(files: list[Path], cache: Path, min_score: float = 0.95, min_size: float = 40.0,
                   other_score: float = 0.5, progress=None):
    """The teacher's face on each photo, cached in ``cache`` (CSV keyed by path).

    A photo is kept when MTCNN finds exactly one face at ``min_score`` or above, at least
    ``min_size`` px wide, and no other face scoring ``other_score`` or more.

    Returns:
        a DataFrame with ``_COLS`` for the kept photos of ``files``.
    """
    import pandas as pd

    from facelab.detect.mtcnn import MTCNN
    from facelab.detect.evaluate import track_items
    from facelab.errors import FacelabError
    from facelab.io import load_image

    have = pd.read_csv(cache) if cache.is_file() else pd.DataFrame(columns=_COLS)
    todo = sorted(set(map(str, files)) - set(have["path"].astype(str)))
    if todo:
        det = MTCNN(min_face_size=20).prepare()
        rows = []
        for path in track_items(todo, "teacher boxes", progress):
            row = [path] + [np.nan] * (len(_COLS) - 1)
            try:
                faces = det.detect(load_image(path))
            except FacelabError as e:  # a bad photo is skipped, not fatal
                log.warning("%s", e)
                faces = []
            strong = [f for f in faces if f.score >= other_score]
            if len(strong) == 1 and strong[0].score >= min_score and strong[0].landmarks is not None:
                f = strong[0]
                if f.box[2] - f.box[0] >= min_size:
                    row = [path, *f.box, f.score, *np.asarray(f.landmarks, float).ravel()]
            rows.append(row)
        have = pd.concat([have, pd.DataFrame(rows, columns=_COLS)], ignore_index=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        have.to_csv(cache, index=False)
    wanted = set(map(str, files))
    kept = have[have["path"].astype(str).isin(wanted) & have["score"].notna()]
    log.info("teacher: %d of %d photos kept", len(kept), len(files))
    return kept.reset_index(drop=True)


def load_photo_faces(labels, margin: float = 0.5, offsets=None):
    """(whole-photo samples, face patches) from :func:`teacher_labels`' rows.

    A sample is ``(image, boxes (1, 4), marks (1, 5, 2))`` like a boxes-CSV image; a patch is
    the face box grown by ``margin`` of its size on each side, clipped to the photo.
    ``offsets`` (x1, y1, x2, y2, in units of the box's width/height) move each teacher box
    to the target data's framing first (``ssd_train.framing_offsets``).
    """
    from facelab.io import load_image

    samples, patches = [], []
    for r in labels.itertuples(index=False):
        image = load_image(r.path)
        box = np.array([r.x1, r.y1, r.x2, r.y2], np.float32)
        if offsets is not None:
            w, h = box[2] - box[0], box[3] - box[1]
            box = box + np.asarray(offsets, np.float32) * [w, h, w, h]
        marks = np.array([getattr(r, c) for c in _LM], np.float32).reshape(5, 2)
        samples.append((image, box[None], marks[None]))
        w, h = box[2] - box[0], box[3] - box[1]
        x0, y0 = max(0, int(box[0] - margin * w)), max(0, int(box[1] - margin * h))
        x1 = min(image.shape[1], math.ceil(box[2] + margin * w))
        y1 = min(image.shape[0], math.ceil(box[3] + margin * h))
        patches.append(FacePatch(image[y0:y1, x0:x1].copy(), box - [x0, y0, x0, y0], marks - [x0, y0]))
    return samples, patches


def _soft_ellipse(h: int, w: int, box: np.ndarray) -> np.ndarray:
    """Alpha (h, w) in [0, 1]: 1 over an ellipse around the face box, fading to 0 at the
    patch edge, so no rectangular seam marks a pasted face."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx = max((box[2] - box[0]) * 0.75, 1.0)
    ry = max((box[3] - box[1]) * 0.85, 1.0)
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.35 - d) / 0.5, 0, 1)


def paste_faces(rng, canvas: np.ndarray, boxes: np.ndarray, marks: np.ndarray, ignore: np.ndarray,
                patches: list[FacePatch], n: int, min_face: float = 12.0, max_face: float = 0.0,
                mask_prob: float = 0.0):
    """Paste up to ``n`` patches into ``canvas`` (uint8, square), away from its faces.

    Each face is scaled to a width drawn log-uniformly in [min_face, max_face] (0 = a third
    of the canvas) and placed where its box overlaps no face already there (IoU < 0.05, a
    few tries each). With ``mask_prob`` a mask is rendered on the patch first.

    Returns:
        (canvas, boxes, marks, ignore) with the pasted faces appended.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> p = FacePatch(np.full((60, 60, 3), 200, np.uint8), np.array([15., 15, 45, 45]),
        ...               np.full((5, 2), 30.))
        >>> c, b, m, i = paste_faces(rng, np.zeros((96, 96, 3), np.uint8), np.zeros((0, 4)),
        ...                          np.zeros((0, 5, 2)), np.zeros(0, bool), [p], 1)
        >>> b.shape, int(c.max()) > 0
        ((1, 4), True)
    """
    import cv2

    from facelab.detect.evaluate import iou_matrix

    if not patches or n <= 0:
        return canvas, boxes, marks, ignore
    T = canvas.shape[0]
    hi = max_face or T / 3
    canvas = canvas.copy()
    boxes, marks, ignore = list(boxes), list(marks), list(ignore)
    for _ in range(n):
        p = patches[int(rng.integers(len(patches)))]
        pix = p.pixels
        if mask_prob and rng.random() < mask_prob:
            pix = _masked(rng, p)
        fw = p.box[2] - p.box[0]
        s = math.exp(rng.uniform(math.log(min_face), math.log(max(hi, min_face + 1)))) / max(fw, 1)
        ph, pw = max(2, round(pix.shape[0] * s)), max(2, round(pix.shape[1] * s))
        if ph >= T or pw >= T:
            continue
        small = cv2.resize(pix, (pw, ph), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        box = p.box * s
        for _try in range(5):
            ox, oy = int(rng.integers(0, T - pw + 1)), int(rng.integers(0, T - ph + 1))
            nb = box + [ox, oy, ox, oy]
            if not boxes or iou_matrix(nb[None], np.asarray(boxes, float)).max() < 0.05:
                break
        else:
            continue
        alpha = _soft_ellipse(ph, pw, box)[..., None]
        region = canvas[oy : oy + ph, ox : ox + pw].astype(np.float32)
        canvas[oy : oy + ph, ox : ox + pw] = (alpha * small + (1 - alpha) * region).astype(np.uint8)
        boxes.append(nb.astype(np.float32))
        marks.append((p.marks * s + [ox, oy]).astype(np.float32))
        ignore.append(False)
    return (canvas, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(marks, np.float32).reshape(-1, 5, 2), np.asarray(ignore, bool))  # fmt: skip


_RENDERER = None


def _masked(rng, patch: FacePatch) -> np.ndarray:
    """The patch with a rendered mask: any kind, worn correctly 80% of the time."""
    from facelab.masks.landmarks import LandmarksError
    from facelab.masks.render import MaskRenderer, render_spec

    global _RENDERER
    if _RENDERER is None:
        _RENDERER = MaskRenderer(wear_weights={"correct": 0.8, "incorrect": 0.2})
    try:
        return render_spec(patch.pixels, patch.marks, _RENDERER.sample(rng))
    except LandmarksError as e:  # degenerate teacher landmarks: paste the face unmasked
        log.debug("mask render failed: %s", e)
        return patch.pixels
