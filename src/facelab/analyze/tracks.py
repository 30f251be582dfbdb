"""Faces over video: tracks across sampled frames, attribute votes per track, mask compliance.

`FaceTracker` associates each sampled frame's faces with the open tracks (Hungarian
assignment, `scipy.optimize.linear_sum_assignment`) on the IoU between a face's box and the
track's predicted box (its last box moved by its last per-frame velocity); when both sides
have an embedding, a face may also join a track by embedding distance, and the distance is
added to the cost. A track not matched for more than `max_gap` sampled frames ends, so a face
that comes back later starts a new track.

`summarize_tracks` turns the per-frame observations into one row per track: first / last
time, number of frames, mean box, mean probabilities and their labels (mask, gender, age),
the share of the track's frames per mask label (mask state over time) and the majority
identity. `compliance` is the share of person-seconds (track frames x sampling interval)
with the mask worn correctly.

Example:
    >>> tr = FaceTracker(iou_min=0.3, max_gap=1)
    >>> tr.update([(0, 0, 10, 10)]), tr.update([(1, 0, 11, 10)]), tr.update([(50, 50, 60, 60)])
    ([0], [0], [1])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facelab.data.labels import CLASS_NAMES, TASKS
from facelab.detect.evaluate import iou_matrix
from facelab.predict.probs import prob_columns

Box = Sequence[float]
_BLOCKED = 1e6


@dataclass
class _Open:
    id: int
    box: np.ndarray
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    embedding: np.ndarray | None = None


class FaceTracker:
    """Online association of faces across sampled frames; one `update` per frame.

    Args:
        iou_min: a face joins a track only when the IoU with its predicted box is at least
            this (or, with embeddings, when the embedding distance is within `max_distance`).
        max_gap: sampled frames a track may miss before it ends (0 = must be in every frame).
        max_distance: cosine distance under which embeddings alone may link a face to a track.
        motion: predict each track's box from its last velocity (helps faces that cross).
    """

    def __init__(self, iou_min: float = 0.3, max_gap: int = 2, max_distance: float = 0.4,
                 motion: bool = True) -> None:
        if not 0 < iou_min <= 1:
            raise ValueError("iou_min must be in (0, 1]")
        if max_gap < 0:
            raise ValueError("max_gap must be >= 0")
        self.iou_min, self.max_gap = float(iou_min), int(max_gap)
        self.max_distance, self.motion = float(max_distance), motion
        self.frame = -1
        self.next_id = 0
        self.open: list[_Open] = []

    def _predicted(self, t: _Open) -> np.ndarray:
        if not self.motion:
            return t.box
        return t.box + t.velocity * (self.frame - t.last_frame)

    def update(self, boxes: Sequence[Box], embeddings: Sequence[np.ndarray | None] | None = None
               ) -> list[int]:
        """Track ids of this frame's faces (same order as `boxes`); new faces get new ids."""
        self.frame += 1
        self.open = [t for t in self.open if self.frame - t.last_frame - 1 <= self.max_gap]
        boxes_arr = np.asarray(boxes, float).reshape(-1, 4)
        embs = [None if e is None else _unit(e) for e in (embeddings or [None] * len(boxes_arr))]
        ids: list[int | None] = [None] * len(boxes_arr)
        if self.open and len(boxes_arr):
            from scipy.optimize import linear_sum_assignment

            pred = np.stack([self._predicted(t) for t in self.open])
            iou = iou_matrix(pred, boxes_arr)
            cost = 1.0 - iou
            allowed = iou >= self.iou_min
            for i, t in enumerate(self.open):
                for j, e in enumerate(embs):
                    if t.embedding is not None and e is not None:
                        dist = 1.0 - float(t.embedding @ e)
                        cost[i, j] += dist
                        allowed[i, j] |= dist <= self.max_distance
            cost = np.where(allowed, cost, _BLOCKED)
            for i, j in zip(*linear_sum_assignment(cost)):
                if allowed[i, j]:
                    t = self.open[i]
                    steps = self.frame - t.last_frame
                    t.velocity = (boxes_arr[j] - t.box) / steps
                    t.box, t.last_frame = boxes_arr[j], self.frame
                    if embs[j] is not None:
                        t.embedding = embs[j] if t.embedding is None else _unit(
                            t.embedding + embs[j])
                    ids[j] = t.id
        for j, box in enumerate(boxes_arr):
            if ids[j] is None:
                self.open.append(_Open(self.next_id, box, self.frame, embedding=embs[j]))
                ids[j] = self.next_id
                self.next_id += 1
        return [int(i) for i in ids]


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float).ravel()
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def track_boxes(frames: Sequence[Sequence[Box]], **options: Any) -> list[list[int]]:
    """Track ids for a whole sequence of per-frame box lists (see `FaceTracker`)."""
    tracker = FaceTracker(**options)
    return [tracker.update(boxes) for boxes in frames]


@dataclass
class Observation:
    """One face of one sampled frame, as the track summary needs it."""

    track: int
    time: float
    box: Box
    probs: dict[str, np.ndarray] | None = None
    identity: str | None = None


def track_columns(attributes: bool, identity: bool) -> list[str]:
    """Columns of the per-track rows."""
    cols = ["source", "track", "first_time", "last_time", "frames", "person_seconds",
            "x1", "y1", "x2", "y2"]
    if attributes:
        cols += [*TASKS, *(f"mask_share_{c}" for c in CLASS_NAMES["mask"]),
                 *(c for t in TASKS for c in prob_columns(t))]
    if identity:
        cols += ["identity", "identity_share"]
    return cols


def summarize_tracks(observations: Sequence[Observation], every: float,
                     source: str = "") -> list[dict[str, Any]]:
    """One row per track (ordered by track id): see the module doc for the fields.

    Mean probabilities decide the labels (a vote weighted by confidence); `mask_share_*` is
    the share of the track's frames whose own label is that mask state. `identity` is the
    most frequent identity among the track's frames ("" = mostly unknown) and
    `identity_share` its share of the frames.
    """
    by_track: dict[int, list[Observation]] = {}
    for o in observations:
        by_track.setdefault(o.track, []).append(o)
    rows = []
    for tid in sorted(by_track):
        obs = sorted(by_track[tid], key=lambda o: o.time)
        box = np.mean([np.asarray(o.box, float) for o in obs], axis=0)
        row: dict[str, Any] = {
            "source": source, "track": tid, "first_time": round(obs[0].time, 3),
            "last_time": round(obs[-1].time, 3), "frames": len(obs),
            "person_seconds": round(len(obs) * every, 3),
            **{k: round(float(v), 2) for k, v in zip(("x1", "y1", "x2", "y2"), box)},
        }
        with_probs = [o.probs for o in obs if o.probs is not None]
        if with_probs:
            for t in TASKS:
                mean = np.mean([np.asarray(p[t], float) for p in with_probs], axis=0)
                row[t] = CLASS_NAMES[t][int(np.argmax(mean))]
                row.update({c: round(float(v), 5) for c, v in zip(prob_columns(t), mean)})
            labels = Counter(CLASS_NAMES["mask"][int(np.argmax(p["mask"]))] for p in with_probs)
            for c in CLASS_NAMES["mask"]:
                row[f"mask_share_{c}"] = round(labels[c] / len(with_probs), 4)
        ids = Counter(o.identity or "" for o in obs)
        best, n = ids.most_common(1)[0]
        if len(ids) > 1 and best == "":
            # a known identity wins a tie with "unknown"
            known = [(k, v) for k, v in ids.most_common() if k]
            if known[0][1] == n:
                best = known[0][0]
        row["identity"], row["identity_share"] = best, round(n / len(obs), 4)
        rows.append(row)
    return rows


def compliance(track_rows: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Share of person-seconds with the mask worn correctly, over the tracks of one video.

    Each track's person-seconds are its frames x the sampling interval; its correct seconds
    are those times its `mask_share_correct`. `share` is None without attributes or faces.
    """
    total = sum(float(r["person_seconds"]) for r in track_rows)
    rated = [r for r in track_rows if "mask_share_correct" in r]
    correct = sum(float(r["person_seconds"]) * float(r["mask_share_correct"]) for r in rated)
    rated_total = sum(float(r["person_seconds"]) for r in rated)
    return {"tracks": len(track_rows), "person_seconds": round(total, 3),
            "correct_seconds": round(correct, 3),
            "share": round(correct / rated_total, 4) if rated_total > 0 else None}


__all__ = ["FaceTracker", "Observation", "compliance", "iou_matrix", "summarize_tracks",
           "track_boxes", "track_columns"]
