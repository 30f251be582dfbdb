"""Sliding-window detection on long videos: a timeline of class probabilities, the detected
intervals of one class (e.g. falls) and event-level scores against annotated segments.

- `sliding_probs`: windows of `window` seconds every `hop` seconds; each window is scored
  as a clip (k frames at the centres of k equal parts of the window, as in training).
- `detect_intervals`: runs of windows whose probability of the class reaches `threshold`,
  runs closer than `merge_gap` seconds merged, runs whose window centres span less than
  `min_duration` seconds dropped; an interval covers its windows, its peak is the highest
  probability in it.
- `event_scores`: a true event is found when a detected interval overlaps it; a detection
  overlapping no true event is a false alarm, counted per minute of video outside the true
  events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.clips.crop import apply_crop
from facelab.clips.video import segment_indices

ScoreFn = Callable[[np.ndarray], np.ndarray]  # uint8 (B, k, H, W, 3) -> probabilities (B, C)


@dataclass
class DetectConfig:
    """Attributes:
        window: window length in seconds.
        hop: seconds between window starts.
        threshold: a window is positive when its class probability reaches this.
        min_duration: runs of positive windows whose centres span less are dropped.
        merge_gap: positive runs this close (seconds) are one interval.
    """

    window: float = 2.0
    hop: float = 0.5
    threshold: float = 0.5
    min_duration: float = 0.0
    merge_gap: float = 1.0


def window_starts(duration: float, window: float, hop: float) -> np.ndarray:
    """Start times covering [0, duration]; one window when the video is shorter than `window`.

    Example:
        >>> window_starts(5.0, 2.0, 1.0).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    if window <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    last = max(duration - window, 0.0)
    starts = np.arange(0.0, last + 1e-9, hop)
    if last - starts[-1] > 1e-6:  # cover the end too
        starts = np.append(starts, last)
    return starts


def sliding_probs(frames: np.ndarray, times: np.ndarray, score: ScoreFn, classes: list[str],
                  k: int, det: DetectConfig, crop: str = "none", pool: int = 16,
                  batch: int = 16) -> pd.DataFrame:
    """One row per window: start, end, centre and p_<class>.

    `frames` uint8 (n, H, W, 3) with `times` (seconds); `crop` as the model was trained
    (a motion crop's box comes from `pool` frames of the window).
    """
    duration = float(times[-1]) + (float(np.median(np.diff(times))) if len(times) > 1 else 0.0)
    starts = window_starts(duration, det.window, det.hop)
    rows, stacks = [], []
    for t0 in starts:
        inside = np.flatnonzero((times >= t0) & (times < t0 + det.window))
        if not len(inside):  # a gap in the stream: the nearest frame
            inside = np.array([int(np.abs(times - (t0 + det.window / 2)).argmin())])
        sel = {k: frames[inside[segment_indices(len(inside), k)]]}
        if crop != "none":
            sel[pool] = frames[inside[segment_indices(len(inside), pool)]]
        stacks.append(apply_crop(sel, crop, pool)[k])
        rows.append((t0, min(t0 + det.window, duration)))
    probs = np.concatenate([score(np.stack(stacks[i:i + batch]))
                            for i in range(0, len(stacks), batch)])
    out = pd.DataFrame(rows, columns=["start", "end"])
    out["center"] = (out["start"] + out["end"]) / 2
    for j, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, j]
    return out


def detect_intervals(timeline: pd.DataFrame, cls: str, det: DetectConfig) -> pd.DataFrame:
    """Intervals (start, end, peak) where p_<cls> reaches det.threshold.

    Example:
        >>> tl = pd.DataFrame({"start": [0., 1, 2, 3, 4, 5], "end": [2., 3, 4, 5, 6, 7],
        ...                    "p_fall": [.1, .9, .8, .1, .1, .7]})
        >>> tl["center"] = tl.start + 1
        >>> detect_intervals(tl, "fall", DetectConfig(threshold=.5, merge_gap=0)).values.tolist()
        [[1.0, 4.0, 0.9], [5.0, 7.0, 0.7]]
        >>> len(detect_intervals(tl, "fall", DetectConfig(threshold=.5, min_duration=1, merge_gap=0)))
        1
    """
    p = timeline[f"p_{cls}"].to_numpy()
    on = p >= det.threshold
    runs: list[list[float]] = []  # start, end, first centre, last centre, peak
    for i in np.flatnonzero(on):
        s, e, c = (float(timeline[col].iloc[i]) for col in ("start", "end", "center"))
        if runs and s - runs[-1][1] <= det.merge_gap:
            r = runs[-1]
            r[1], r[3], r[4] = max(r[1], e), c, max(r[4], float(p[i]))
        else:
            runs.append([s, e, c, c, float(p[i])])
    kept = [(r[0], r[1], r[4]) for r in runs if r[3] - r[2] >= det.min_duration]
    return pd.DataFrame(kept, columns=["start", "end", "peak"])


def event_scores(detected: list[tuple[float, float]], truth: list[tuple[float, float]],
                 duration: float) -> dict:
    """Events found, detections, false alarms and the seconds of video outside true events.

    Example:
        >>> event_scores([(1, 2), (8, 9)], [(1.5, 4)], 10.0)
        {'events': 1, 'found': 1, 'detections': 2, 'false_alarms': 1, 'negative_s': 7.5}
    """
    found = sum(any(s < te and e > ts for s, e in detected) for ts, te in truth)
    false = sum(not any(s < te and e > ts for ts, te in truth) for s, e in detected)
    covered = sum(min(te, duration) - max(ts, 0.0) for ts, te in truth if te > ts)
    return {"events": len(truth), "found": int(found), "detections": len(detected),
            "false_alarms": int(false), "negative_s": max(duration - covered, 0.0)}


def summarize(scores: list[dict]) -> dict:
    """Event recall, false alarms per minute outside events, and event precision."""
    tot = {k: sum(s[k] for s in scores) for k in scores[0]} if scores else {}
    if not tot:
        return {}
    tot["recall"] = tot["found"] / tot["events"] if tot["events"] else float("nan")
    tot["false_alarms_per_min"] = tot["false_alarms"] / (tot["negative_s"] / 60) if tot["negative_s"] else float("nan")
    true_det = tot["detections"] - tot["false_alarms"]
    tot["precision"] = true_det / tot["detections"] if tot["detections"] else float("nan")
    return tot


SEGMENT = re.compile(r"([^\[\];]+?)\s*\[([^\]]*)\]")


def parse_segments(text: str) -> list[tuple[str, float, float]]:
    """GMDCSA24's `segments` column: `Name[a to b; c to d]; Other[e to f]`.

    Example:
        >>> parse_segments("Falling (BW) [0.3 to 5]; Standing[0 to 0.2; 1 to 2]")
        [('Falling (BW)', 0.3, 5.0), ('Standing', 0.0, 0.2), ('Standing', 1.0, 2.0)]
    """
    out = []
    for name, spans in SEGMENT.findall(text or ""):
        for span in spans.split(";"):
            m = re.match(r"\s*([\d.]+)\s*to\s*([\d.]+)\s*$", span)
            if m:
                out.append((name.strip(), float(m.group(1)), float(m.group(2))))
    return out


def fall_segments(text: str) -> list[tuple[float, float]]:
    """The (start, end) of segments whose name starts with `fall` (Falling (BW), Fall (FW))."""
    return [(a, b) for name, a, b in parse_segments(text) if name.lower().startswith("fall")]


def timeline_png(timeline: pd.DataFrame, intervals: pd.DataFrame, path: str | Path,
                 threshold: float | None = None, truth: list[tuple[float, float]] = (),
                 title: str = "") -> None:
    """Class probabilities over time (window centres), detected intervals shaded, true
    events (if given) as bars under the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3))
    for col in [c for c in timeline.columns if c.startswith("p_")]:
        ax.plot(timeline["center"], timeline[col], label=col[2:])
    for s, e in zip(intervals.get("start", []), intervals.get("end", [])):
        ax.axvspan(s, e, color="red", alpha=0.15)
    for s, e in truth:
        ax.plot([s, e], [-0.05, -0.05], color="black", lw=4, solid_capstyle="butt")
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="gray", lw=0.8)
    ax.set(xlabel="seconds", ylabel="probability", ylim=(-0.1, 1.05), title=title[:80])
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
