"""Sliding-window fall detection on GMDCSA24, out of fold: event recall and false alarms per
minute of video outside falls (issue 16, item 4; `facelab clips predict --timeline`).

Protocol (fixed before any result was seen):
- outer leave-one-subject-out over GMDCSA24's 4 subjects; the model for subject s is trained
  (fall vs ADL, whole clips) on all UP-Fall clips + GMDCSA24 clips of the other subjects;
- detection settings (threshold, min_duration) are chosen without subject s: inner
  leave-one-subject-out over the other three GMDCSA24 subjects (train on UP-Fall + two,
  timelines of the third), the pooled inner timelines' best event F1 (ties: fewer false
  alarms, then the higher threshold) over threshold 0.3..0.9 x min_duration 0/0.5/1/2 s;
- timelines: 2 s windows every 0.5 s, frames decoded at <= 10 fps, 112 px whole frames,
  merge gap 1 s (fixed); each GMDCSA24 clip is one video;
- truth: GMDCSA24's `segments` whose name starts with "Fall" (the fall and the lying after
  it); a fall is found when a detected interval overlaps it; a detection overlapping no fall
  is a false alarm; false alarms are per minute of video outside the fall segments (ADL
  clips and the standing/walking parts of fall clips).
Methods: baseline-mid (frozen ImageNet MobileNetV2 features of the window's middle frame +
logistic regression, C=1), 2d-1f (MobileNetV2 fine-tuned on one random frame per clip, as in
benchmarks/clips.py), optionally 2d-k8 (8 frames per window) and frozen-mhi (frozen MobileNetV2
features of the motion image of 16 frames + logistic regression, facelab.clips.frozen; trained
on whole clips, applied to each window's 16 frames; the trajectory and flow sets need whole
clips).
Intervals: recall 95% Wilson; false alarms per minute 95% exact Poisson (Garwood).

    FACELAB_DATA=../shared/data .venv/bin/python benchmarks/clips_events.py [--methods ...]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import pandas as pd
import torch
from clips import Features, finetune_cfg, frozen_cfg, setup
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from facelab.clips.engine import clip_scorer, fit, load_model
from facelab.clips.timeline import (
    DetectConfig,
    detect_intervals,
    event_scores,
    fall_segments,
    sliding_probs,
    summarize,
)
from facelab.clips.video import FrameCache, decode_timed, load_stacks
from facelab.models.backbone import create_backbone

SIZE, FPS = 112, 10.0
WINDOW = DetectConfig(window=2.0, hop=0.5, merge_gap=1.0)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_DURATIONS = (0.0, 0.5, 1.0, 2.0)
CLASSES = ["adl", "fall"]


class Baseline:
    """Frozen MobileNetV2 features of a window's middle frame + logistic regression."""

    def __init__(self, feats: Features):
        self.mid = feats.sets["none"][0]
        self.bb = create_backbone("mobilenet_v2", "imagenet").eval()
        self.mean = torch.tensor(self.bb.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.bb.std).view(1, 3, 1, 1)

    def train(self, table: pd.DataFrame):
        x = np.stack([self.mid[c] for c in table["clip"]])
        y = (table["label"] == "fall").to_numpy().astype(int)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(x, y)

        def score(frames: np.ndarray) -> np.ndarray:  # (B, 1, H, W, 3)
            with torch.no_grad():
                xb = torch.from_numpy(frames[:, 0]).permute(0, 3, 1, 2).float() / 255
                f = self.bb((xb - self.mean) / self.std).numpy()
            return clf.predict_proba(f)
        return score, 1


def trainer_for(make_cfg, cache: FrameCache):
    """table -> (window scorer, frames per window) of a model trained on the table's clips."""
    def train(table: pd.DataFrame):
        cfg = make_cfg()
        tmp = Path(tempfile.mkdtemp(prefix="clipevents_"))
        try:
            res = fit(cfg, table, tmp, resume=False, cache=cache)
            assert res.classes == CLASSES, res.classes
            model, _, _ = load_model(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return clip_scorer(model), cfg.sampling.eval_frames
    return train


def finetuned(method: str, cache: FrameCache, args):
    return trainer_for(lambda: finetune_cfg(method, args, SIZE), cache)


def frozen(sets: str, cache: FrameCache):
    return trainer_for(lambda: frozen_cfg(sets, SIZE), cache)


def timelines(score, k, clips, videos) -> dict[str, pd.DataFrame]:
    return {c: sliding_probs(*videos[c], score, CLASSES, k, WINDOW) for c in clips}


def scores_at(tls: dict, truth: dict, durations: dict, thr: float, min_d: float) -> dict:
    det = DetectConfig(WINDOW.window, WINDOW.hop, thr, min_d, WINDOW.merge_gap)
    per = []
    for c, tl in tls.items():
        iv = detect_intervals(tl, "fall", det)
        per.append(event_scores(list(zip(iv["start"], iv["end"])), truth[c], durations[c]))
    return summarize(per)


def choose(tls, truth, durations) -> tuple[float, float]:
    best, best_key = None, None
    for thr, min_d in itertools.product(THRESHOLDS, MIN_DURATIONS):
        s = scores_at(tls, truth, durations, thr, min_d)
        p, r = s["precision"], s["recall"]
        f1 = 0.0 if np.isnan(p) or np.isnan(r) or p + r == 0 else 2 * p * r / (p + r)
        key = (f1, -s["false_alarms"], thr)
        if best_key is None or key > best_key:
            best, best_key = (thr, min_d), key
    return best


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def poisson_rate(k: int, minutes: float) -> tuple[float, float]:
    lo = stats.chi2.ppf(0.025, 2 * k) / 2 if k else 0.0
    hi = stats.chi2.ppf(0.975, 2 * k + 2) / 2
    return lo / minutes, hi / minutes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=["baseline-mid", "2d-1f"],
                    choices=["baseline-mid", "2d-1f", "2d-k8", "frozen-mhi"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--epochs3d", type=int, default=3)
    args = ap.parse_args()
    both = setup()
    if both is None:
        return
    t_start = time.perf_counter()
    gm = both[both["dataset"] == "gmdcsa24"]
    up = both[both["dataset"] == "up-fall"]
    cache = FrameCache(SIZE)
    stacks, bad = load_stacks(list(both["clip"]), (1, 8, 16), cache)
    assert not bad, bad
    feats = Features(stacks)
    t0 = time.perf_counter()
    videos = {c: decode_timed(c, SIZE, FPS) for c in gm["clip"]}
    durations = {c: float(t[-1]) + 1 / FPS for c, (_, t) in videos.items()}
    segs = dict(zip(gm["clip"], gm["segments"]))
    truth = {c: [(a, min(b, durations[c])) for a, b in fall_segments(segs[c])] for c in gm["clip"]}
    print(f"{len(videos)} GMDCSA24 videos decoded at <= {FPS:g} fps in {time.perf_counter() - t0:.1f} s; "
          f"{sum(durations.values()) / 60:.2f} min of video, {sum(map(len, truth.values()))} falls")
    subjects = sorted(gm["subject"].unique())
    lines = [("| method | falls found / total | event recall [95% CI] | false alarms | "
              "false alarms / min outside falls [95% CI] | per-subject recall; FA/min | "
              "chosen threshold, min duration per subject |"), "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        trainer = (Baseline(feats).train if method == "baseline-mid" else
                   frozen("mhi", cache) if method == "frozen-mhi" else finetuned(method, cache, args))
        per_subject, chosen = [], []
        t0 = time.perf_counter()
        for s in subjects:
            rest = [u for u in subjects if u != s]
            inner: dict[str, pd.DataFrame] = {}
            for u in rest:
                train = pd.concat([up, gm[~gm["subject"].isin([s, u])]])
                score, k = trainer(train)
                inner.update(timelines(score, k, gm.loc[gm["subject"] == u, "clip"], videos))
            thr, min_d = choose(inner, truth, durations)
            score, k = trainer(pd.concat([up, gm[gm["subject"] != s]]))
            outer = timelines(score, k, gm.loc[gm["subject"] == s, "clip"], videos)
            per_subject.append(scores_at(outer, truth, durations, thr, min_d))
            chosen.append(f"{s}: {thr:g}, {min_d:g} s")
        tot = summarize([{k: v for k, v in p.items() if k in ("events", "found", "detections",
                          "false_alarms", "negative_s")} for p in per_subject])
        rlo, rhi = wilson(tot["found"], tot["events"])
        flo, fhi = poisson_rate(tot["false_alarms"], tot["negative_s"] / 60)
        per = " / ".join(f"{p['recall']:.2f}; {p['false_alarms_per_min']:.2f}" for p in per_subject)
        lines.append(f"| {method} | {tot['found']} / {tot['events']} | {tot['recall']:.2f} "
                     f"[{rlo:.2f}, {rhi:.2f}] | {tot['false_alarms']} | "
                     f"{tot['false_alarms_per_min']:.2f} [{flo:.2f}, {fhi:.2f}] | {per} | "
                     f"{'; '.join(chosen)} |")
        print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; subjects {', '.join(subjects)}; "
          f"{WINDOW.window:g} s windows every {WINDOW.hop:g} s, merge gap {WINDOW.merge_gap:g} s\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
