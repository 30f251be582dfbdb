"""Detector evaluation against a boxes CSV: recall per class and size bucket, precision, speed.

The boxes CSV has columns ``image,x1,y1,x2,y2,label`` (paths relative to the CSV's folder),
one row per annotated face. Matching is greedy by detection score at IoU >= 0.5 (Pascal VOC
style); each ground-truth face matches at most one detection.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.detect.base import Detector
from facelab.errors import ConfigError, DataFormatError, FacelabError

log = logging.getLogger(__name__)

REQUIRED = ("image", "x1", "y1", "x2", "y2", "label")


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Read a boxes CSV (``image,x1,y1,x2,y2,label``); adds an absolute ``path`` column.

    Example:
        >>> df = read_boxes("data/face-mask-detection/boxes.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / "boxes.csv"
    if not path.is_file():
        raise DataFormatError(
            f"boxes CSV {path} not found; pass a file or a folder holding boxes.csv"
        )
    df = pd.read_csv(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataFormatError(f"{path}: missing columns {missing}; need {', '.join(REQUIRED)}")
    df["path"] = [str((path.parent / p).resolve()) for p in df["image"]]
    return df


def split_images(images, test_fraction: float = 0.25, seed: str = "facelab-detect") -> dict:
    """Deterministic image-disjoint split: image -> "train" or "test", by a hash of its name.

    The same image always lands on the same side, whatever else is in the CSV, so a detector
    trained on "train" is never scored on its own images.

    Example:
        >>> split_images(["a.jpg", "b.jpg"])["a.jpg"] in ("train", "test")
        True
    """
    out = {}
    for name in images:
        h = hashlib.sha1(f"{seed}:{Path(str(name)).name}".encode()).digest()
        out[name] = "test" if int.from_bytes(h[:4], "big") / 2**32 < test_fraction else "train"
    return out


SPLITS = ("test", "train", "fit", "val", "all")


def split_rows(df: pd.DataFrame, part: str, test_fraction: float = 0.25,
               val_fraction: float = 0.2) -> pd.DataFrame:
    """Rows of a boxes frame in one part of the image-hash split: "test" (held out), "train"
    (the rest), "val" (the training part's validation images, by a second hash), "fit"
    (train minus val: what detectors learn from) or "all".

    Example:
        >>> df = pd.DataFrame({"image": [f"i{k}.jpg" for k in range(40)]})
        >>> len(split_rows(df, "fit")) + len(split_rows(df, "val")) == len(split_rows(df, "train"))
        True
    """
    if part not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {part!r}")
    if part == "all":
        return df
    side = split_images(df["image"].unique(), test_fraction)
    if part == "test":
        return df[df["image"].map(side) == "test"]
    df = df[df["image"].map(side) == "train"]
    if part == "train":
        return df
    val_side = split_images(df["image"].unique(), val_fraction, seed="facelab-val")
    return df[df["image"].map(val_side) == ("test" if part == "val" else "train")]


def intersection_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of (N, 4) and (M, 4) xyxy boxes.

    Example:
        >>> intersection_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2]])).tolist()
        [[2.0]]
    """
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iw = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    return iw * ih


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes.

    Example:
        >>> iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2]])).round(3).tolist()
        [[0.333]]
    """
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    inter = intersection_matrix(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(gt: np.ndarray, det: np.ndarray, scores: np.ndarray, iou: float = 0.5):
    """Greedy matching by score. Returns (gt_matched bool[N], det_matched bool[M]).

    Example:
        >>> match(np.array([[0, 0, 10, 10]]), np.array([[1, 1, 10, 10]]), np.array([0.9]))
        (array([ True]), array([ True]))
    """
    gt_hit = np.zeros(len(gt), bool)
    det_hit = np.zeros(len(det), bool)
    if len(gt) and len(det):
        m = iou_matrix(det, gt)
        for d in np.argsort(-np.asarray(scores), kind="stable"):
            cand = np.where(~gt_hit, m[d], -1.0)
            g = int(np.argmax(cand))
            if cand[g] >= iou:
                gt_hit[g] = det_hit[d] = True
    return gt_hit, det_hit


@dataclass
class EvalResult:
    """Detection metrics for one detector."""

    name: str
    images: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time: robust to other load on a shared machine
    gt: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per GT face, with 'hit'
    detections: int = 0
    true_dets: int = 0
    stage_counts: dict = field(default_factory=dict)
    det_widths: list = field(default_factory=list)  # one entry per detection
    det_hits: list = field(default_factory=list)
    failed: list = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.true_dets / self.detections if self.detections else float("nan")

    def precision_from(self, min_size: float) -> float:
        """Precision over detections at least ``min_size`` px wide."""
        w, h = np.asarray(self.det_widths, float), np.asarray(self.det_hits, bool)
        sel = w >= min_size
        return float(h[sel].mean()) if sel.any() else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    @property
    def faces_per_s(self) -> float:
        return len(self.gt) / self.seconds if self.seconds else float("nan")

    def recall(self, label: str | None = None, min_size: float = 0.0) -> float:
        g = self.gt
        if label is not None:
            g = g[g["label"] == label]
        g = g[g["width"] >= min_size]
        return float(g["hit"].mean()) if len(g) else float("nan")

    def row(self, labels: list[str], min_size: float = 32.0) -> dict:
        """One table row: recall per class (>= min_size and all), precision, speed."""
        r = {"detector": self.name}
        for lab in labels:
            r[f"{lab} >={min_size:g}px"] = self.recall(lab, min_size)
            r[f"{lab} all"] = self.recall(lab)
        r[f"all >={min_size:g}px"] = self.recall(None, min_size)
        r["all"] = self.recall()
        r["precision"] = self.precision
        r[f"precision >={min_size:g}px"] = self.precision_from(min_size)
        r["images/s"] = self.images_per_s
        r["images/cpu-s"] = self.images / self.cpu_seconds if self.cpu_seconds else float("nan")
        r["faces/s"] = self.faces_per_s
        return r


def _timed_batches(detector: Detector, items: list, paths: list, res, batch_size: int,
                   progress: bool):
    """Yield (items, images, faces) batch by batch: each item's image loaded from its path
    (unreadable ones go to ``res.failed``), ``detect_batch`` timed into ``res.seconds`` and
    ``res.cpu_seconds``, the weights loaded before any timing."""
    from facelab.io import load_image

    detector.prepare()
    with _progress(progress, detector.name) as bar:
        task = bar.add_task(detector.name, total=len(items)) if bar else None
        for start in range(0, len(items), batch_size):
            kept, images = [], []
            for item, path in zip(items[start : start + batch_size], paths[start : start + batch_size]):
                try:
                    images.append(load_image(path))
                    kept.append(item)
                except FacelabError as exc:
                    res.failed.append(f"{path}: {exc}")
            t0, c0 = time.perf_counter(), time.process_time()
            found = detector.detect_batch(images) if images else []
            res.seconds += time.perf_counter() - t0
            res.cpu_seconds += time.process_time() - c0
            res.images += len(images)
            yield kept, images, found
            if bar:
                bar.advance(task, len(items[start : start + batch_size]))


def evaluate_detector(
    detector: Detector,
    boxes: pd.DataFrame,
    *,
    iou: float = 0.5,
    batch_size: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Run a detector over every image of ``boxes`` and match against its faces.

    Example:
        >>> res = evaluate_detector(get_detector("mtcnn"), read_boxes("boxes.csv"))  # doctest: +SKIP
        >>> res.recall("with_mask", min_size=32)  # doctest: +SKIP
    """
    res = EvalResult(name=detector.name)
    groups = list(boxes.groupby("path", sort=True))
    rows = []
    batches = _timed_batches(detector, [g for _, g in groups], [p for p, _ in groups], res,
                             batch_size, progress)  # fmt: skip
    for chunk, _, found in batches:
        for g, faces in zip(chunk, found):
            gt = g[["x1", "y1", "x2", "y2"]].to_numpy(float)
            det = np.array([f.box for f in faces], float).reshape(-1, 4)
            gt_hit, det_hit = match(gt, det, np.array([f.score for f in faces]), iou)
            res.detections += len(faces)
            res.true_dets += int(det_hit.sum())
            res.det_widths += [f.width for f in faces]
            res.det_hits += det_hit.tolist()
            for f in faces:
                res.stage_counts[f.stage] = res.stage_counts.get(f.stage, 0) + 1
            rows.append(g.assign(hit=gt_hit, width=g["x2"] - g["x1"]))
    res.gt = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=[*boxes.columns, "hit", "width"])
    )
    return res


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def track_items(items, label: str, progress):
    """Yield ``items``, advancing a task ``label`` on ``progress`` (a :func:`_progress` bar;
    None = no bar), for loops of detector passes over images (landmark and teacher labels)."""
    if progress is None:
        yield from items
        return
    with progress as bar:
        task = bar.add_task(label, total=len(items)) if bar else None
        for item in items:
            yield item
            if bar:
                bar.advance(task)


def _progress(enabled: bool, _label: str):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), transient=True,
    )  # fmt: skip


def _cell(text: str) -> str:
    """A Markdown table cell: a union spec's "|" must not end the cell."""
    return str(text).replace("|", "\\|")


def format_table(results: list[EvalResult], labels: list[str], min_size: float = 32.0) -> str:
    """A Markdown table of :meth:`EvalResult.row` for several detectors.

    Example:
        >>> print(format_table([], ["with_mask"]))  # doctest: +ELLIPSIS
        | detector | ...
    """
    cols = ["detector"]
    for lab in labels:
        cols += [f"{lab} >={min_size:g}px", f"{lab} all"]
    cols += [f"all >={min_size:g}px", "all", "precision", f"precision >={min_size:g}px"]
    cols += ["images/s", "images/cpu-s", "faces/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in (res.row(labels, min_size) for res in results):
        cells = [_cell(r["detector"])] + [
            f"{r[c]:.1f}" if "/" in c else f"{r[c]:.3f}" for c in cols[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class PhotoResult:
    """Detection on single-face photos (close-ups, one face each, no box annotations).

    ``found`` = share of photos with at least one face; ``extra`` = share with more than one;
    the box figures describe the best-scoring face relative to the photo: ``width`` = median
    box width / photo width, ``centred`` = share whose box centre lies in the photo's middle
    third (both ways), the framing these data sets were cropped to.
    """

    name: str
    images: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    counts: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    centred: list = field(default_factory=list)
    failed: list = field(default_factory=list)

    def row(self) -> dict:
        n = max(len(self.counts), 1)
        c = np.asarray(self.counts)
        return {
            "detector": self.name,
            "found": float((c >= 1).sum() / n),
            "extra": float((c > 1).sum() / n),
            "width": float(np.median(self.widths)) if self.widths else float("nan"),
            "centred": float(np.mean(self.centred)) if self.centred else float("nan"),
            "images/s": self.images / self.seconds if self.seconds else float("nan"),
            "images/cpu-s": self.images / self.cpu_seconds if self.cpu_seconds else float("nan"),
        }


def sample_photos(folder: str | Path, limit: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); ``limit`` > 0 keeps an evenly spaced
    subset of that many, the same on every run.

    Example:
        >>> len(sample_photos("data/utkface", 300))  # doctest: +SKIP
        300
    """
    from facelab.io import is_image_file

    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"photo folder {folder} not found; pass a folder of face photos")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataFormatError(f"{folder} holds no image files")
    if limit and len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def evaluate_photos(
    detector: Detector, files: list[Path], *, batch_size: int = 8, progress: bool = True
) -> PhotoResult:
    """Run a detector over single-face photos; see :class:`PhotoResult` for the figures.

    Example:
        >>> res = evaluate_photos(get_detector("mtcnn"), sample_photos("utkface", 300))  # doctest: +SKIP
        >>> res.row()["found"]  # doctest: +SKIP
    """
    res = PhotoResult(name=detector.name)
    for _, images, found in _timed_batches(detector, files, files, res, batch_size, progress):
        for im, faces in zip(images, found):
            res.counts.append(len(faces))
            if faces:
                h, w = im.shape[:2]
                x1, y1, x2, y2 = max(faces, key=lambda f: f.score).box
                cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
                res.widths.append((x2 - x1) / w)
                res.centred.append(bool(1 / 3 <= cx <= 2 / 3 and 1 / 3 <= cy <= 2 / 3))
    return res


def format_photo_table(results: list[PhotoResult]) -> str:
    """A Markdown table of :meth:`PhotoResult.row` for several detectors.

    Example:
        >>> print(format_photo_table([]).splitlines()[0])
        | detector | found | extra | width | centred | images/s | images/cpu-s |
    """
    cols = ["detector", "found", "extra", "width", "centred", "images/s", "images/cpu-s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in (res.row() for res in results):
        cells = [_cell(r["detector"])] + [f"{r[c]:.1f}" if "/" in c else f"{r[c]:.3f}"
                                          for c in cols[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
