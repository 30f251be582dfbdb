"""``facelab detect-train --arch ssd-mbv2``: train the single-shot MobileNetV2 face detector.

Data: a boxes CSV (``image,x1,y1,x2,y2,label``). Only the training part of the image-hash
split (:func:`facelab.detect.evaluate.split_images`, the split ``detect-eval`` scores on) is
read; a further hash split of it holds out validation images that choose the score
threshold. Test images are never opened.

- Landmark targets are distilled from MTCNN: each ground-truth face gets the 5 landmarks of
  the MTCNN face matching it (IoU >= 0.5); faces MTCNN misses (often masked ones) have no
  landmark loss. They are computed once and cached in a CSV (``landmarks`` setting).
- Augmentation: random scale (0.5x-2x around the reference scale (`size`)), random crop/pad to a
  square, horizontal flip (landmarks swapped), colour jitter; faces cut by the crop to
  less than 60 % or smaller than 4 px are ignored (neither positive nor negative).
- Anchors match faces at IoU >= 0.35 (each face also gets its best anchor); the score is
  trained with the sigmoid focal loss over all anchors (hard negatives weigh in by
  themselves), boxes and landmarks with smooth L1 on positives.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from facelab.detect.evaluate import intersection_matrix, iou_matrix, read_boxes, split_rows, track_items
from facelab.detect.ssd import (
    ARCH,
    FLIP_LANDMARKS,
    PAD_VALUE,
    anchors_for,
    encode,
)
from facelab.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)


@dataclass
class SSDTrainConfig:
    """Settings of ``facelab detect-train --arch ssd-mbv2`` (saved in the checkpoint's meta).

    Attributes:
        boxes: boxes CSV or a folder holding boxes.csv.
        out: checkpoint to write.
        size: reference letterbox side, pixels: training scales are relative to it.
        infer_size: the letterbox side the detector runs at (saved as the checkpoint's
            ``size``; the score threshold is chosen at it); 0 = ``size``. For
            :func:`rethreshold`, 0 keeps the checkpoint's own size. 576 finds more small
            faces on the 400 px crowd photos than 480, at lower precision and speed; measured
            and not made the default (docs/detection.md, "Input size").
        crop: training crop side (0 = ``size``); smaller crops train faster at the same scale.
        freeze: MobileNetV2 feature blocks kept frozen (ImageNet weights, BN statistics).
        epochs: passes over the training images.
        batch_size: crops per step.
        lr: AdamW peak learning rate (cosine decay, linear warm-up).
        weight_decay: AdamW weight decay.
        scale_min / scale_max: random scale range around the reference scale.
        fpn: feature-pyramid channels.
        landmarks: CSV caching the MTCNN landmark targets ('' = beside ``out``).
        test_fraction: images held out by name hash (never read here).
        val_fraction: share of the remaining images used to choose the threshold.
        precision_target: the threshold is the lowest whose validation precision reaches it.
        workers: DataLoader worker processes (0 = in the main process).
        device: "cpu", "cuda" or "" (cuda when available).
        threads: torch CPU threads.
        limit: use only the first N training images (quick runs; 0 = all).
        save_every: also write the checkpoint every N epochs (0 = only at the end).
        seed: random seed.
        photos: folders of single-face photos from other data sets (e.g. lfw-train) labelled
            by a teacher (MTCNN) and used as whole training images and as copy-paste faces
            (:mod:`facelab.detect.paste`); empty = boxes CSV only.
        photos_limit: evenly spaced photos used per folder (0 = all).
        photo_share: whole photos drawn per epoch, as a share of the boxes CSV's images.
        paste_prob: chance that a crowd-scene crop gets pasted faces.
        paste_max: at most this many faces pasted into one crop.
        paste_mask: chance that a pasted face wears a rendered mask.
        teacher_cache: CSV caching the teacher's photo boxes ('' = beside ``out``).
        mosaic: chance that a crowd-scene crop (boxes CSV) is a 2x2 mosaic of four training
            images, each at half the scale (more, and smaller, faces per step; 0 = off).
        unannotated: MTCNN score from which a face that MTCNN finds in a training image but
            that overlaps no annotated box is ignored in training (neither face nor
            background; 0 = off). The boxes CSVs leave background faces unannotated, and as
            negatives they teach the detector to miss them.
        unannotated_cache: CSV caching those faces ('' = beside ``out``).
        unmasked_repeat: each training image holding an unmasked (``without_mask``) face is
            drawn this many times per epoch (1 = once, like every other image): unmasked
            faces are 18 % of the training faces and the ones the detector misses most.
            In a mosaic crop only the first tile follows the repeat.
    """

    boxes: str = ""
    out: str = f"runs/detect/{ARCH}.pt"
    size: int = 480
    infer_size: int = 0
    crop: int = 224
    freeze: int = 4
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scale_min: float = 0.5
    scale_max: float = 2.0
    fpn: int = 64
    landmarks: str = ""
    test_fraction: float = 0.25
    val_fraction: float = 0.2
    precision_target: float = 0.9
    workers: int = 0
    device: str = ""
    threads: int = 1
    limit: int = 0
    save_every: int = 0
    seed: int = 0
    photos: list[str] = field(default_factory=list)
    photos_limit: int = 0
    photo_share: float = 0.25
    paste_prob: float = 0.5
    paste_max: int = 4
    paste_mask: float = 0.3
    teacher_cache: str = ""
    mosaic: float = 0.5
    unannotated: float = 0.0
    unannotated_cache: str = ""
    unmasked_repeat: int = 1


def training_split(df, cfg: SSDTrainConfig):
    """(fit rows, validation rows) of a boxes frame: the test split's images are dropped first.

    Example:
        >>> fit, val = training_split(read_boxes("boxes.csv"), SSDTrainConfig())  # doctest: +SKIP
    """
    fit = split_rows(df, "fit", cfg.test_fraction, cfg.val_fraction)
    val = split_rows(df, "val", cfg.test_fraction, cfg.val_fraction)
    if cfg.limit:
        fit = fit[fit["image"].isin(sorted(fit["image"].unique())[: cfg.limit])]
    if fit.empty or val.empty:
        raise DataFormatError(f"{cfg.boxes}: too few images to split into train/validation")
    return fit, val


def distill_landmarks(df, cache: Path, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's face for each ground-truth face: ((len(df), 5, 2) landmarks, (len(df), 4) box),
    NaN where MTCNN finds no face at IoU >= 0.5; cached in ``cache`` keyed by image and box.

    The boxes give :func:`framing_offsets`, the landmarks the landmark targets.
    """
    import pandas as pd

    from facelab.detect.evaluate import match
    from facelab.detect.mtcnn import MTCNN
    from facelab.io import load_image

    cols = [f"lm{i}_{a}" for i in range(5) for a in "xy"] + ["mx1", "my1", "mx2", "my2"]
    keys = ["image", "x1", "y1", "x2", "y2"]
    have = pd.read_csv(cache) if cache.is_file() else pd.DataFrame(columns=keys + cols)
    if not set(cols) <= set(have.columns):  # a cache of an older format: redo it
        have = pd.DataFrame(columns=keys + cols)
    todo = sorted(set(df["image"]) - set(have["image"]))
    if todo:
        det = MTCNN(min_face_size=12).prepare()
        rows = []
        for image in track_items(todo, "MTCNN landmarks", progress):
            g = df[df["image"] == image]
            gt = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
            faces = det.detect(load_image(g["path"].iloc[0]))
            found = np.full((len(g), 14), np.nan)
            if faces:
                boxes = np.array([f.box for f in faces], float)
                ious = iou_matrix(gt, boxes)
                hit, _ = match(gt, boxes, np.array([f.score for f in faces]))
                for gi in np.nonzero(hit)[0]:
                    j = int(ious[gi].argmax())
                    found[gi] = [*faces[j].landmarks.ravel(), *boxes[j]]
            rows.append(pd.concat([g[keys].reset_index(drop=True),
                                   pd.DataFrame(found, columns=cols)], axis=1))  # fmt: skip
        have = pd.concat([have, *rows], ignore_index=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        have.to_csv(cache, index=False)
    merged = df[keys].merge(have.drop_duplicates(keys), on=keys, how="left")
    return merged[cols[:10]].to_numpy(float).reshape(-1, 5, 2), merged[cols[10:]].to_numpy(float)


def check_sizes(cfg: SSDTrainConfig) -> None:
    """ConfigError for sizes and counts that would only fail, or save a broken checkpoint,
    after a long run."""
    if cfg.size < 32 or cfg.infer_size < 0 or 0 < cfg.infer_size < 32:
        raise ConfigError(f"size={cfg.size}, infer_size={cfg.infer_size}: letterbox sides are pixels, "
                          "at least 32 (infer_size 0 = the training size)")
    if cfg.unmasked_repeat < 1:
        raise ConfigError(f"unmasked_repeat={cfg.unmasked_repeat}: draw each image at least once (1 = no repeat)")


def check_unannotated(score: float) -> None:
    """ConfigError unless ``score`` is an MTCNN score the unannotated-faces cache can answer
    (it keeps MTCNN's faces from 0.5 up)."""
    if not 0.5 <= score <= 1:
        raise ConfigError(f"unannotated={score}: give an MTCNN score in [0.5, 1] (or 0 = off)")


def unannotated_faces(df, cache: Path, score: float, progress=None) -> dict[str, np.ndarray]:
    """Faces MTCNN finds (score >= ``score``) in each image of ``df`` that overlap no annotated
    box (IoU < 0.3, and under half of the face inside one): image -> (n, 4) boxes. MTCNN's
    faces down to score 0.5 are cached in ``cache``, so other scores reuse the pass.

    These are mostly background faces the annotators left out (seen on validation images:
    16 of 38 false alarms were faces), with some of MTCNN's own false alarms.
    """
    import pandas as pd

    from facelab.detect.mtcnn import MTCNN
    from facelab.io import load_image

    check_unannotated(score)
    cols = ["image", "x1", "y1", "x2", "y2", "score"]
    have = pd.read_csv(cache, dtype={"image": str}) if cache.is_file() else pd.DataFrame(columns=cols)
    done = set(have["image"])
    todo = sorted(set(df["image"]) - done)
    if todo:
        det = MTCNN(min_face_size=12).prepare()
        rows = []
        for image in track_items(todo, "MTCNN: unannotated faces", progress):
            path = df.loc[df["image"] == image, "path"].iloc[0]
            faces = [f for f in det.detect(load_image(path)) if f.score >= 0.5]
            rows += [[image, *f.box, f.score] for f in faces] or [[image, np.nan, np.nan, np.nan, np.nan, np.nan]]
        have = pd.concat([have, pd.DataFrame(rows, columns=cols)], ignore_index=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        have.to_csv(cache, index=False)
    out: dict[str, np.ndarray] = {}
    for image, g in df.groupby("image"):
        gt = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
        t = have[(have["image"] == image) & (have["score"] >= score)][["x1", "y1", "x2", "y2"]].to_numpy(float)
        if len(t):
            inside = intersection_matrix(t, gt) / np.maximum((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]), 1e-6)[:, None]
            free = (iou_matrix(t, gt).max(1) < 0.3) & (inside.max(1) < 0.5)
            t = t[free]
        out[str(image)] = t.astype(np.float32).reshape(-1, 4)
    return out


def framing_offsets(gt: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Median offsets (x1, y1, x2, y2) from the teacher's boxes to the annotated ones, in units
    of the teacher box's width/height, over faces both have (rows with NaN are skipped).

    The boxes CSV's framing differs from MTCNN's (face-mask-detection boxes reach further
    down, over the mask and chin): teacher boxes on photos are moved by these offsets so the
    photos teach the framing the detector is scored on, not MTCNN's.

    Example:
        >>> framing_offsets(np.array([[0., 10, 100, 110]]), np.array([[0., 0, 100, 100]]))
        array([0. , 0.1, 0. , 0.1])
    """
    ok = np.isfinite(teacher).all(1) & np.isfinite(gt).all(1)
    if not ok.any():
        return np.zeros(4)
    t = teacher[ok]
    wh = np.stack([t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]] * 2, 1)
    return np.median((gt[ok] - t) / np.maximum(wh, 1e-6), axis=0)


def augment(rng, image: np.ndarray, boxes: np.ndarray, marks: np.ndarray, cfg: SSDTrainConfig,
            forced: np.ndarray | None = None):
    """One training crop: (uint8 size x size x 3, boxes (n, 4), marks (n, 5, 2), ignore (n,)).
    ``forced`` (n,) marks boxes that are always ignored (unannotated faces).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> im, b, m, ign = augment(rng, np.zeros((300, 400, 3), np.uint8),
        ...                         np.array([[100., 100, 150, 160]]), np.full((1, 5, 2), np.nan),
        ...                         SSDTrainConfig(size=128, crop=0))
        >>> im.shape
        (128, 128, 3)
    """
    import cv2

    T = cfg.crop or cfg.size
    h, w = image.shape[:2]
    s = cfg.size / max(h, w) * math.exp(rng.uniform(math.log(cfg.scale_min), math.log(cfg.scale_max)))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    im = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ox = int(rng.integers(0, nw - T + 1)) if nw > T else -int(rng.integers(0, T - nw + 1))
    oy = int(rng.integers(0, nh - T + 1)) if nh > T else -int(rng.integers(0, T - nh + 1))
    canvas = np.full((T, T, 3), PAD_VALUE, np.uint8)
    sx, sy = max(ox, 0), max(oy, 0)
    part = im[sy : sy + T, sx : sx + T]
    canvas[sy - oy : sy - oy + part.shape[0], sx - ox : sx - ox + part.shape[1]] = part
    b = boxes * s - [ox, oy, ox, oy]
    m = marks * s - [ox, oy]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    c = np.clip(b, 0, T)
    vis = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1]) / np.maximum(area, 1e-6)
    keep = vis > 0.05
    b, m, vis = c[keep], m[keep], vis[keep]
    ignore = (vis < 0.6) | (b[:, 2] - b[:, 0] < 4) | (b[:, 3] - b[:, 1] < 4)
    if forced is not None:
        ignore |= np.asarray(forced, bool)[keep]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        b = np.stack([T - b[:, 2], b[:, 1], T - b[:, 0], b[:, 3]], 1)
        m = np.stack([T - m[..., 0], m[..., 1]], -1)[:, list(FLIP_LANDMARKS)]
    hsv = cv2.cvtColor(np.ascontiguousarray(canvas), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.6, 1.4)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.65, 1.35) + rng.uniform(-20, 20)
    canvas = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < 0.05:
        canvas = np.repeat(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
    return canvas, b, m, ignore


def mosaic(rng, samples: list, first: int, cfg: SSDTrainConfig):
    """A 2x2 mosaic crop: sample ``first`` and three random others, each an :func:`augment`
    crop at half the side and half the scale; same return as :func:`augment`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> s = [(np.zeros((300, 400, 3), np.uint8), np.array([[100., 100, 150, 160]], np.float32),
        ...       np.full((1, 5, 2), np.nan, np.float32))]
        >>> im, b, m, ign = mosaic(rng, s, 0, SSDTrainConfig(size=128, crop=0))
        >>> im.shape, len(b) <= 4
        ((128, 128, 3), True)
    """
    from dataclasses import replace

    T = cfg.crop or cfg.size
    half = replace(cfg, size=max(1, cfg.size // 2), crop=T // 2)
    canvas = np.full((T, T, 3), PAD_VALUE, np.uint8)
    boxes, marks, ignore = [], [], []
    picks = [first, *rng.integers(len(samples), size=3).tolist()]
    for k, idx in enumerate(picks):
        image, b, m, *forced = samples[int(idx)]
        im, b, m, ign = augment(rng, image, b, m, half, *forced)
        ox, oy = (k % 2) * (T // 2), (k // 2) * (T // 2)
        canvas[oy : oy + T // 2, ox : ox + T // 2] = im
        boxes.append(b + [ox, oy, ox, oy])
        marks.append(m + [ox, oy])
        ignore.append(ign)
    return (canvas, np.concatenate(boxes).astype(np.float32), np.concatenate(marks).astype(np.float32),
            np.concatenate(ignore))  # fmt: skip


def assign(anchors: np.ndarray, boxes: np.ndarray, marks: np.ndarray, ignore: np.ndarray):
    """Per-anchor targets: labels (1 face, 0 background, -1 ignored), box offsets (K, 4),
    landmark offsets (K, 10) and a landmark mask (K,).

    Example:
        >>> a = anchors_for(64, 64)
        >>> lab, *_ = assign(a, np.array([[20., 20, 40, 40]]), np.full((1, 5, 2), np.nan), np.zeros(1, bool))
        >>> int((lab == 1).sum()) >= 1
        True
    """
    k = len(anchors)
    labels = np.zeros(k, np.int64)
    tbox, tlm, lmask = np.zeros((k, 4), np.float32), np.zeros((k, 10), np.float32), np.zeros(k, bool)
    if not len(boxes):
        return labels, tbox, tlm, lmask
    axy = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    iou = iou_matrix(axy, boxes)
    best_gt, best = iou.argmax(1), iou.max(1)
    labels[(best >= 0.2) & (best < 0.35)] = -1
    pos = best >= 0.35
    forced = iou.argmax(0)  # every face gets its best anchor
    best_gt[forced] = np.arange(len(boxes))
    pos[forced] = True
    labels[pos] = 1
    labels[pos & ignore[best_gt]] = -1
    idx = np.nonzero(labels == 1)[0]
    g = best_gt[idx]
    tb, tl = encode(anchors[idx], boxes[g], np.nan_to_num(marks[g]))
    tbox[idx], tlm[idx] = tb, tl
    lmask[idx] = ~np.isnan(marks[g]).any(axis=(1, 2))
    return labels, tbox, tlm, lmask


class _Crops:
    """torch Dataset of augmented crops with their anchor targets (made in the workers).

    Items ``0..len(index)-1`` are the boxes CSV's images, each ``repeats`` times (with
    pasted faces at ``paste_prob``); the rest of an epoch are whole photos drawn afresh
    each epoch."""

    def __init__(self, samples: list, cfg: SSDTrainConfig, photos: list = (), patches: list = (),
                 repeats: list[int] | None = None) -> None:
        self.samples, self.cfg = samples, cfg
        # item -> sample: each sample ``repeats[j]`` times (once each by default)
        self.index = [j for j, r in enumerate(repeats or [1] * len(samples)) for _ in range(r)]
        self.photos, self.patches = list(photos), list(patches)
        self.n_photos = round(cfg.photo_share * len(samples)) if self.photos else 0
        self.anchors = anchors_for(cfg.crop or cfg.size, cfg.crop or cfg.size)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index) + self.n_photos

    def __getitem__(self, i: int):
        import torch

        from facelab.detect.paste import paste_faces

        rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
        boxes_item = i < len(self.index)
        if boxes_item:
            image, boxes, marks, *forced = self.samples[self.index[i]]  # forced: unannotated faces, ignored
        else:
            image, boxes, marks, *forced = self.photos[int(rng.integers(len(self.photos)))]
        if boxes_item and self.cfg.mosaic and rng.random() < self.cfg.mosaic:
            im, b, m, ign = mosaic(rng, self.samples, self.index[i], self.cfg)
        else:
            im, b, m, ign = augment(rng, image, boxes, marks, self.cfg, *forced)
        if boxes_item and self.patches and rng.random() < self.cfg.paste_prob:
            n = int(rng.integers(1, self.cfg.paste_max + 1))
            im, b, m, ign = paste_faces(rng, im, b, m, ign, self.patches, n, mask_prob=self.cfg.paste_mask)
        labels, tbox, tlm, lmask = assign(self.anchors, b, m, ign)
        return (torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1),
                torch.from_numpy(labels), torch.from_numpy(tbox), torch.from_numpy(tlm),
                torch.from_numpy(lmask))  # fmt: skip


def ssd_loss(outputs, labels, tbox, tlm, lmask):
    """Sigmoid focal loss on scores (all non-ignored anchors) + smooth L1 on the positives'
    boxes (x2) and landmarks; each normalised by its number of positives."""
    import torch
    from torch.nn import functional as F
    from torchvision.ops import sigmoid_focal_loss

    pbox, logits, plm = outputs
    valid = labels >= 0
    pos = labels == 1
    n_pos = pos.sum().clamp(min=1).float()
    cls = sigmoid_focal_loss(logits[valid], pos[valid].float(), reduction="sum") / n_pos
    box = F.smooth_l1_loss(pbox[pos], tbox[pos], beta=1 / 9, reduction="sum") / n_pos
    lm_pos = pos & lmask
    lm = F.smooth_l1_loss(plm[lm_pos], tlm[lm_pos], beta=1 / 9, reduction="sum") / lm_pos.sum().clamp(min=1)
    total = cls + 2 * box + 0.5 * lm
    return total, {k: float(v.detach()) for k, v in (("cls", cls), ("box", box), ("lm", lm))}


def choose_score_threshold(weights: str | Path, val_df, target: float, coarse: int = 160,
                           size: int = 0, step: float = 0.005) -> dict:
    """The score threshold of a checkpoint, chosen on validation images as the detector runs.

    Both letterbox passes are run once at a low threshold; then, for each candidate
    threshold, both are cut at it *before* the passes are merged (:func:`ssd.merge_scales`
    drops fine-pass faces inside coarse-pass faces, so cutting after the merge would let
    junk coarse boxes below the threshold delete real faces). The threshold kept is the one
    with the highest recall among those whose precision reaches ``target`` (the highest
    precision when none does).

    Example:
        >>> choose_score_threshold("d.pt", split_rows(read_boxes("b.csv"), "val"), 0.9)  # doctest: +SKIP
        {'score_thresh': 0.45, 'val_precision': 0.9, 'val_recall': 0.74, ...}
    """
    from facelab.detect.evaluate import match
    from facelab.detect.ssd import SSDMobileNetV2Detector, merge_scales
    from facelab.io import load_image

    det = SSDMobileNetV2Detector(weights=str(weights), score_thresh=0.05, coarse=0,
                                 size=size or None).prepare()
    groups = list(val_df.groupby("path", sort=True))
    images = [load_image(p) for p, _ in groups]
    fine = det._pass(images, int(det.cfg.size))
    rough = det._pass(images, coarse) if coarse else [[] for _ in images]
    gts = [g[["x1", "y1", "x2", "y2"]].to_numpy(float) for _, g in groups]
    best = None
    grid = np.round(np.arange(0.05, 1.0, step), 4)  # even steps: most scores are low, quantiles would skip the top
    for t in grid:
        found = correct = n_det = 0
        for f, c, gt in zip(fine, rough, gts):
            faces = merge_scales([x for x in f if x.score >= t], [x for x in c if x.score >= t], det.cfg.nms)
            boxes = np.array([x.box for x in faces], float).reshape(-1, 4)
            gt_hit, det_hit = match(gt, boxes, np.array([x.score for x in faces]))
            found, correct, n_det = found + int(gt_hit.sum()), correct + int(det_hit.sum()), n_det + len(faces)
        prec = correct / n_det if n_det else 0.0
        rec = found / max(len(val_df), 1)
        key = (prec >= target, rec if prec >= target else prec, -t)
        if best is None or key > best[0]:
            best = (key, float(t), prec, rec)
    _, thr, prec, rec = best
    return {"score_thresh": round(thr, 4), "size": int(det.cfg.size), "coarse": int(coarse),
            "val_precision": round(prec, 4),
            "val_recall": round(rec, 4), "val_images": len(groups), "val_faces": int(len(val_df))}  # fmt: skip


def rethreshold(cfg: SSDTrainConfig) -> dict:
    """Choose ``cfg.out``'s score threshold again on the validation images (no training), at
    ``cfg.infer_size`` or else the checkpoint's own size, and write both into the
    checkpoint's meta; returns the meta."""
    from facelab.detect.ssd import load_checkpoint

    if cfg.infer_size:
        check_sizes(cfg)
    out = Path(cfg.out)
    ckpt = load_checkpoint(out)
    meta = dict(ckpt["meta"])
    if meta.get("test_fraction", cfg.test_fraction) != cfg.test_fraction:
        raise DataFormatError(f"{out} was trained with test_fraction {meta['test_fraction']}")
    _, val = training_split(read_boxes(cfg.boxes), cfg)
    meta.update(choose_score_threshold(out, val, cfg.precision_target, size=cfg.infer_size or int(meta["size"])))
    _save_state(ckpt["state"], meta, out)
    return meta


def _photo_supervision(cfg: SSDTrainConfig, out: Path, offsets: np.ndarray,
                       progress) -> tuple[list, list, dict]:
    """(whole-photo samples, paste patches, meta) from ``cfg.photos`` (empty when none); the
    teacher's boxes are moved by ``offsets`` (:func:`framing_offsets`)."""
    if not cfg.photos:
        return [], [], {}
    from facelab.detect.evaluate import _progress
    from facelab.detect.paste import list_photos, load_photo_faces, teacher_labels

    files = list_photos(cfg.photos, cfg.photos_limit)
    cache = Path(cfg.teacher_cache) if cfg.teacher_cache else out.with_suffix(".teacher.csv")
    labels = teacher_labels(files, cache, progress=progress or _progress(True, "teacher"))
    if labels.empty:
        raise DataFormatError(f"{', '.join(cfg.photos)}: the teacher kept no photo (one confident "
                              "face per photo is needed); check the folders hold face photos")
    photos, patches = load_photo_faces(labels, offsets=offsets)
    meta = {"photo_sources": [str(p) for p in cfg.photos], "photo_files": len(files),
            "photo_faces": len(patches), "teacher_box_offsets": [round(float(v), 4) for v in offsets]}  # fmt: skip
    return photos, patches, meta


def _save(net, meta: dict, out: Path) -> None:
    _save_state({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, meta, out)


def _save_state(state: dict, meta: dict, out: Path) -> None:
    import torch

    from facelab.io.atomic import atomic_path

    with atomic_path(out) as tmp:
        torch.save({"state": state, "meta": meta}, tmp)


def train_ssd(cfg: SSDTrainConfig, progress=None) -> dict:
    """Train the detector on ``cfg.boxes`` and write ``cfg.out``; returns the checkpoint meta.

    Example:
        >>> meta = train_ssd(SSDTrainConfig(boxes="face-mask-detection", epochs=1))  # doctest: +SKIP
    """
    import torch

    from facelab.detect.evaluate import _progress
    from facelab.detect.ssd import build_model
    from facelab.io import load_image

    check_sizes(cfg)  # before the long passes
    if cfg.unannotated:
        check_unannotated(cfg.unannotated)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        df = read_boxes(cfg.boxes)
        fit, val = training_split(df, cfg)
        out = Path(cfg.out)
        lm_cache = Path(cfg.landmarks) if cfg.landmarks else out.with_suffix(".landmarks.csv")
        marks, teacher_boxes = distill_landmarks(fit, lm_cache, progress or _progress(True, "landmarks"))
        offsets = framing_offsets(fit[["x1", "y1", "x2", "y2"]].to_numpy(float), teacher_boxes)
        extra: dict[str, np.ndarray] = {}
        if cfg.unannotated:
            cache = (Path(cfg.unannotated_cache) if cfg.unannotated_cache
                     else out.with_suffix(".unannotated.csv"))  # fmt: skip
            extra = unannotated_faces(fit, cache, cfg.unannotated, progress or _progress(True, "unannotated"))
        samples, repeats = [], []
        for path, idx in fit.groupby("path", sort=True).indices.items():
            g = fit.iloc[idx]
            repeats.append(max(1, cfg.unmasked_repeat) if (g["label"] == "without_mask").any() else 1)
            boxes, lms = g[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), marks[idx].astype(np.float32)
            t = extra.get(str(g["image"].iloc[0]), np.zeros((0, 4), np.float32))  # always ignored
            samples.append((load_image(path), np.concatenate([boxes, t]),
                            np.concatenate([lms, np.full((len(t), 5, 2), np.nan, np.float32)]),
                            np.r_[np.zeros(len(boxes), bool), np.ones(len(t), bool)]))  # fmt: skip
        photos, patches, photo_meta = _photo_supervision(cfg, out, offsets, progress)
        data = _Crops(samples, cfg, photos, patches, repeats)
        loader = torch.utils.data.DataLoader(
            data, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
            drop_last=len(data) > cfg.batch_size, persistent_workers=False,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        net = build_model(fpn=cfg.fpn, pretrained=True).to(device)
        net = net.to(memory_format=torch.channels_last)
        frozen = [m for s in net.stages for m in s][: cfg.freeze]
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = max(1, cfg.epochs * len(loader))
        warm = min(300, steps // 10 + 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
        )
        history: list = []
        meta = {
            "arch": ARCH, "size": cfg.infer_size or cfg.size, "fpn": cfg.fpn, "score_thresh": 0.5,
            "split": "image-hash", "test_fraction": cfg.test_fraction,
            "train_images": int(fit["image"].nunique()), "train_faces": int(len(fit)),
            "train_image_names": sorted(fit["image"].unique().tolist()),
            "landmark_targets": int((~np.isnan(marks).any(axis=(1, 2))).sum()),
            "unannotated_ignored": int(sum(len(v) for v in extra.values())),
            "config": asdict(cfg), "device": str(device), **photo_meta,
        }  # fmt: skip
        track = progress or _progress(True, "train")
        with track as bar:
            task = bar.add_task(f"train {ARCH}", total=steps) if bar else None
            for epoch in range(cfg.epochs):
                data.epoch = epoch
                net.train()
                for m in frozen:
                    m.eval()
                sums, n = {"loss": 0.0, "cls": 0.0, "box": 0.0, "lm": 0.0}, 0
                for x, labels, tbox, tlm, lmask in loader:
                    x = x.to(device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
                    tgt = [t.to(device, non_blocking=True) for t in (labels, tbox, tlm, lmask)]
                    loss, parts = ssd_loss(net(x), *tgt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 10.0)
                    opt.step()
                    sched.step()
                    sums["loss"] += float(loss.detach())
                    for k, v in parts.items():
                        sums[k] += v
                    n += 1
                    if bar:
                        bar.advance(task)
                history.append({k: round(v / max(n, 1), 4) for k, v in sums.items()})
                log.info("epoch %d %s", epoch + 1, history[-1])
                if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                    _save(net, {**meta, "epochs_done": epoch + 1, "history": history}, out)
        meta.update(history=history, epochs_done=cfg.epochs,
                    train_seconds=round(time.perf_counter() - t0, 1))
        _save(net, meta, out)
        meta.update(choose_score_threshold(out, val, cfg.precision_target))
        _save(net, meta, out)
        return meta
    finally:
        torch.set_num_threads(old_threads)
