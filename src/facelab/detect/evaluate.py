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
from facelab.errors import DataFormatError, FacelabError

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


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes.

    Example:
        >>> iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2]])).round(3).tolist()
        [[0.333]]
    """
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iw = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = iw * ih
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
    from facelab.io import load_image

    res = EvalResult(name=detector.name)
    groups = list(boxes.groupby("path", sort=True))
    detector.prepare()  # weights load outside the timed region
    rows = []
    track = _progress(progress, f"eval {detector.name}")
    with track as bar:
        task = bar.add_task(detector.name, total=len(groups)) if bar else None
        for start in range(0, len(groups), batch_size):
            chunk, images = [], []
            for path, g in groups[start : start + batch_size]:
                try:
                    images.append(load_image(path))
                    chunk.append(g)
                except FacelabError as exc:
                    res.failed.append(f"{path}: {exc}")
            t0, c0 = time.perf_counter(), time.process_time()
            found = detector.detect_batch(images) if images else []
            res.seconds += time.perf_counter() - t0
            res.cpu_seconds += time.process_time() - c0
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
                g = g.assign(hit=gt_hit, width=g["x2"] - g["x1"])
                rows.append(g)
            res.images += len(images)
            if bar:
                bar.advance(task, len(chunk))
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


def _progress(enabled: bool, _label: str):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), transient=True,
    )  # fmt: skip


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
        cells = [r["detector"]] + [
            f"{r[c]:.1f}" if "/" in c else f"{r[c]:.3f}" for c in cols[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
