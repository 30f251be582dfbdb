"""Clip classifiers on real clips, on the same grouped folds in one run (issue 16, item 4).

Tasks and folds:
- fall vs ADL on GMDCSA24 + UP-Fall together, 4 grouped folds: GMDCSA24 leave-one-subject-
  out (subject i in fold i), UP-Fall trials (`event`, both camera views) by
  StratifiedGroupKFold, so no subject / trial is on both sides;
- UP-Fall 11 activities, 3 grouped folds by `event` (one trial per activity per fold);
- cross-dataset fall vs ADL: train on all of GMDCSA24, test on UP-Fall, and the reverse.

Methods (all settings fixed before any real-data result was seen; nothing is selected on
these folds):
- baseline: frozen ImageNet MobileNetV2 pooled features + logistic regression
  (standardised, C=1), on the middle frame, and on the mean of 8 uniform frames' features;
- 2d-1f: MobileNetV2 (ImageNet) fine-tuned on one random frame per clip per step (the
  seed's winner), middle frame at test;
- 2d-k8: the same backbone on 8 frames (one random frame per segment), scores averaged
  (TSN), 8 uniform frames at test;
- i3d-k8: MobileNetV2 inflated to 3D (facelab.clips.inflate: ImageNet 2D weights, 3x3x3
  depthwise kernels, first 12 stages frozen) on 8 frames, trained --epochs3d epochs;
- 3d-r3d: torchvision r3d_18 from scratch (no Kinetics weights offline) on 8 frames,
  --epochs3d epochs;
- each fine-tuned model without and with rotation augmentation (+-30 degrees), at each of
  --sizes (whole frames scaled to size x size);
- levers for the cross-dataset parts (--levers): `+mcrop`, frames cut to the square around
  what moves in the clip (facelab.clips.crop; a person-centred crop with no detector);
- frozen-* (`model.kind: frozen`, facelab.clips.frozen; no network trained): standardised
  logistic regression (C=1) per feature set, probabilities averaged over sets. Sets:
  `mhi`, frozen MobileNetV2 features of the clip's motion image (16 uniform frames,
  differences colour-coded by third of the clip); `traj`, the moving silhouette's
  trajectory (11 numbers, facelab.clips.motion.FEATURES; decoded at 10 fps, 120 px high,
  whatever --sizes says; its speed includes that decode); `app`, features of the middle
  of the 16 frames; `flow`, 8 optical-flow numbers of the moving pixels in person heights
  per second (facelab.clips.motion.FLOW_FEATURES, Farneback on the trajectory's decode;
  added 2026-12-01 after the other sets, settings fixed before its first run).
  frozen-mhi-flow-traj is configs/clips_motion.yaml (frozen-mhi-traj was, before flow). frozen-auto (`model.features: auto`) chooses the fusion of
  mhi / flow / trajectory per fit by grouped 4-fold CV on that fit's training clips only
  (nested: the scored clips never choose), and the table is followed by what it chose;
  its speeds count only the chosen sets (the fit extracted all three). These were designed after the rows above had shown that
  whole-frame models do not transfer across data sets; their settings were fixed before
  their first run on these clips and every variant run is a row here (none dropped);
  `+mcrop` cuts the frames to the motion box first (the motion image then shows the body
  at a similar scale in every room; the trajectory is unchanged); `+mirror` averages the
  backbone sets' features with the mirror image's (`model.mirror`: a viewpoint lever, left
  and right alike; flow and trajectory are mirror-free already); `+tunec` chooses each set's
  logistic-regression C from 0.01 / 0.1 / 1 / 10 by grouped CV on that fit's training clips
  (`model.tune_C`, nested like frozen-auto), and the chosen C's are printed under the table.
Fine-tuning: first 12 of 19 MobileNetV2 stages frozen (2D, i3d), AdamW lr 1e-3, cosine,
6 epochs (2D) / 3 (i3d, 3D), batch 16, horizontal flip; seed 0.
Folds are deterministic (assign_folds, seed 0): runs split by --sizes / --parts / --methods
use the same folds.

Resumable with --cells DIR: each fold's result of each method is kept there, named by
the task, size, method, epochs and the fold's clips, so the same command after an
interruption fits only what is missing (frames and features are still prepared for each
size); a table that reads kept results says so (their speeds are from the run that made
them). The name does not cover the code: delete DIR after changing code or settings, and
reproduce figures without --cells (the default keeps nothing).

Intervals: 95% percentile bootstrap (1000 resamples) of the pooled out-of-fold predictions,
resampling events (a GMDCSA24 clip, or a UP-Fall trial's two views together).
Speeds: train clips/s (a clip = one step's sample), inference clips/s on decoded, cached
frames (model only), single thread; decoding is timed separately on the first, uncached pass.

    FACELAB_DATA=../shared/data .venv/bin/python benchmarks/clips.py [--sizes 112 160]
        [--parts binary activity cross] [--methods ...] [--levers ...] [--skip PART:SIZE:METHOD]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from facelab.clips.config import load_clip_config
from facelab.clips.crop import apply_crop
from facelab.clips.dataset import load_clips
from facelab.clips.engine import fit, load_model, predict_clips
from facelab.clips.folds import assign_folds, bootstrap, present_macro_f1
from facelab.clips.frozen import FrozenClipModel
from facelab.clips.motion import (
    decode_grey,
    flow_features,
    person_scale,
    silhouette_track,
    trajectory_features,
)
from facelab.clips.video import FrameCache, load_stacks
from facelab.io.atomic import atomic_path
from facelab.models.backbone import create_backbone
from facelab.paths import missing_data

ROTATE = 30.0
FROZEN = {"frozen-mhi": "mhi", "frozen-traj": "trajectory", "frozen-mhi-traj": "mhi,trajectory",
          "frozen-app-mhi-traj": "appearance,mhi,trajectory", "frozen-flow": "flow",
          "frozen-flow-traj": "flow,trajectory", "frozen-mhi-flow": "mhi,flow",
          "frozen-mhi-flow-traj": "mhi,flow,trajectory", "frozen-auto": "auto"}
BASES = ("baseline-mid", "baseline-mean8", "2d-1f", "2d-k8", "i3d-k8", "3d-r3d", *FROZEN)
# a method is a base plus optional switches: +rot (rotation +-30 degrees), +mcrop (motion crop),
# +mirror (frozen-*: backbone features averaged with the mirror image's), +tunec (frozen-*:
# each set's C chosen by grouped CV on the training clips, model.tune_C)
METHODS = ("baseline-mid", "baseline-mean8", "2d-1f", "2d-1f+rot", "2d-k8", "2d-k8+rot",
           "i3d-k8", "i3d-k8+rot", "3d-r3d", "3d-r3d+rot", *FROZEN)
LEVERS = ("baseline-mid+mcrop", "baseline-mean8+mcrop", "2d-k8+mcrop", "i3d-k8+mcrop")


def parse_method(method: str) -> tuple[str, set[str]]:
    base, *flags = method.split("+")
    frozen_only = {"mirror", "tunec"}
    if (base not in BASES or not set(flags) <= {"rot", "mcrop", *frozen_only}
            or (base in FROZEN and "rot" in flags) or (base not in FROZEN and frozen_only & set(flags))):
        raise SystemExit(f"unknown method {method!r}: a base of {BASES} with +rot / +mcrop "
                         "(frozen-* take +mcrop / +mirror / +tunec only)")
    return base, set(flags)


def finetune_cfg(method: str, args, size: int) -> object:
    base, flags = parse_method(method)
    k = 1 if base == "2d-1f" else 8
    kind = base.split("-")[0]
    epochs = args.epochs3d if kind in ("3d", "i3d") else args.epochs
    return load_clip_config(None, [
        f"data.size={size}", f"epochs={epochs}", "batch_size=16", "lr=0.001",
        f"model.kind={kind}", "model.arch3d=r3d_18", "model.time_kernel=3",
        f"model.freeze={0 if kind == '3d' else 12}", f"model.pretrained={'' if kind == '3d' else 'imagenet'}",
        "sampling.pool=16", f"sampling.train_frames={k}", f"sampling.eval_frames={k}",
        f"augment.rotate={ROTATE if 'rot' in flags else 0}",
        f"data.crop={'motion' if 'mcrop' in flags else 'none'}", "seed=0", "threads=1"])


class Features:
    """Frozen ImageNet MobileNetV2 features of the middle frame and of 8 uniform frames
    (whole frames, and with `mcrop` frames cut around the clip's motion)."""

    def __init__(self, stacks: dict, mcrop: bool = False):
        bb = create_backbone("mobilenet_v2", "imagenet").eval()
        mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
        std = torch.tensor(bb.std).view(1, 3, 1, 1)
        self.sets = {}
        t0 = time.perf_counter()
        for crop in ("none", "motion") if mcrop else ("none",):
            mid, mean8 = {}, {}
            with torch.no_grad():
                for clip, st in stacks.items():
                    st = apply_crop(st, crop, 16)
                    x = torch.from_numpy(np.concatenate([st[1], st[8]])).permute(0, 3, 1, 2).float() / 255
                    f = bb((x - mean) / std).numpy()
                    mid[clip], mean8[clip] = f[0], f[1:].mean(0)
            self.sets[crop] = (mid, mean8)
        self.frames_per_s = 9 * len(stacks) * len(self.sets) / (time.perf_counter() - t0)


def frozen_cfg(sets: str, size: int, crop: str = "none", mirror: bool = False, tune_c: bool = False):
    return load_clip_config(None, [f"data.size={size}", f"data.crop={crop}", "model.kind=frozen",
                                   f"model.features={sets}", f"model.mirror={str(mirror).lower()}",
                                   f"model.tune_C={str(tune_c).lower()}",
                                   "model.C=1.0", "sampling.pool=16", "sampling.eval_frames=16",
                                   "seed=0", "threads=1"])


class FrozenFeatures:
    """Every frozen feature set of every clip, once per size, and each set's extraction
    speed (clips/s on decoded frames; for `trajectory` and `flow`, on frames decoded at 10 fps,
    that decode included)."""

    def __init__(self, clips: list[str], size: int, cache: FrameCache, crop: str = "none",
                 mirror: bool = False):
        model = FrozenClipModel(frozen_cfg("appearance,mhi,trajectory,flow", size, crop, mirror), [])
        feats, bad, _ = model.extract(clips, cache)
        if bad:  # the same clips fail for the other methods: they cannot be scored at all
            raise SystemExit(f"clips failed to decode: {bad}; fix or remove them")
        self.row = {c: i for i, c in enumerate(clips)}
        self.feats = feats
        self.speed = {}
        some = clips[:32]
        stacks, _ = load_stacks(some, (16,), cache)
        batch = np.stack([stacks[c][16] for c in some])
        for name in ("appearance", "mhi"):
            m = FrozenClipModel(frozen_cfg(name, size, mirror=mirror), [])
            m.image_features(batch[:2])  # warm-up (weights loaded, kernels chosen)
            t0 = time.perf_counter()
            m.image_features(batch)
            self.speed[name] = len(batch) / (time.perf_counter() - t0)
        # trajectory and flow read the clip itself (10 fps, 120 px high): each speed counts
        # that decode (a row with both counts it twice: pessimistic by one decode)
        decode_s = traj_s = flow_s = 0.0
        for c in some:
            t0 = time.perf_counter()
            grey, times = decode_grey(c)
            t1 = time.perf_counter()
            track = silhouette_track(grey)
            trajectory_features(track, times)
            t2 = time.perf_counter()
            flow_features(grey, times, person_scale(track))
            decode_s, traj_s, flow_s = decode_s + t1 - t0, traj_s + t2 - t1, flow_s + time.perf_counter() - t2
        self.speed["trajectory"] = len(some) / (decode_s + traj_s)
        self.speed["flow"] = len(some) / (decode_s + flow_s)


def run_frozen(method, frozen: dict, size, train, test, classes):
    base, flags = parse_method(method)
    crop = "motion" if "mcrop" in flags else "none"
    ff = frozen[(crop, "mirror" in flags)]
    model = FrozenClipModel(frozen_cfg(FROZEN[base], size, crop, "mirror" in flags, "tunec" in flags), classes)
    sets = list(model.sets)  # for frozen-auto: the candidates (the fit keeps a subset)
    tr = [ff.row[c] for c in train["clip"]]
    te = [ff.row[c] for c in test["clip"]]
    y = train["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    if len(set(y)) < len(classes):
        raise RuntimeError(f"training part lacks classes {set(classes) - set(train['label'])}")
    t0 = time.perf_counter()
    model.fit({s: ff.feats[s][tr] for s in sets}, y, train["group"].to_numpy())
    fit_s = time.perf_counter() - t0
    chosen = []  # what the fit chose (frozen-auto: the fusion; +tunec: each set's C)
    if model.cfg.model.auto_features:
        chosen.append("+".join(model.sets))
    if model.cfg.model.tune_C:
        chosen.append(",".join(f"{s}:{model.heads_c[s]:g}" for s in model.sets))
    sets = list(model.sets)
    per_clip = sum(1 / ff.speed[s] for s in sets)
    return (model.proba({s: ff.feats[s][te] for s in sets}),
            len(train) / (len(train) * per_clip + fit_s), 1 / per_clip, "; ".join(chosen))


def run_baseline(method, feats, train, test, classes):
    base, flags = parse_method(method)
    mid, mean8 = feats.sets["motion" if "mcrop" in flags else "none"]
    src = mid if base == "baseline-mid" else mean8
    xtr = np.stack([src[c] for c in train["clip"]])
    xte = np.stack([src[c] for c in test["clip"]])
    ytr = train["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    frames = 1 if base == "baseline-mid" else 8
    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(xtr, ytr)
    fit_s = time.perf_counter() - t0
    proba = np.zeros((len(test), len(classes)))
    proba[:, clf.classes_] = clf.predict_proba(xte)
    # speeds include the feature extraction (measured once for all clips, per frame)
    extract_s = frames / feats.frames_per_s
    return proba, len(train) / (len(train) * extract_s + fit_s), 1 / extract_s


def run_finetune(method, args, size, train, test, cache, classes):
    cfg = finetune_cfg(method, args, size)
    tmp = Path(tempfile.mkdtemp(prefix="clipbench_"))
    try:
        res = fit(cfg, train, tmp, resume=False, cache=cache)
        if res.classes != classes:
            raise RuntimeError(f"training part lacks classes {set(classes) - set(res.classes)}")
        model, _, _ = load_model(tmp)
        proba, _, infer = predict_clips(model, cfg, list(test["clip"]), cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return proba, res.train_clips_per_s, infer


def _speed(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def evaluate(name, table, folds, methods, args, size, feats, cache, lines, test_folds=None,
             frozen=None):
    """Out-of-fold predictions of every method on the same folds (scored on `test_folds`,
    default all); one table row each."""
    test_folds = sorted(set(folds)) if test_folds is None else test_folds
    classes = sorted(table["label"].unique())
    y = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    lines.append(f"\n### {name}, {size} px\n")
    lines.append("| method | accuracy [95% CI] | macro F1 [95% CI] | per-fold macro F1 | "
                 "train clips/s | infer clips/s |")
    lines.append("|---|---|---|---|---|---|")
    chosen = {}
    reused = 0
    for method in methods:
        notes = []  # per fold, what its fit chose (frozen-auto, +tunec)
        probs = np.zeros((len(table), len(classes)))
        tr_speed, inf_speed = [], []
        for f in test_folds:
            tr, te = table[folds != f], table[folds == f]
            cell = cell_path(args, name, size, method, tr, te)
            kept = read_cell(cell, list(te["clip"]), classes) if cell is not None else None
            if kept is not None:  # finished by an earlier run of this grid
                p, a, b, note = kept
                reused += 1
            else:
                note = ""
                if method.startswith("baseline"):
                    p, a, b = run_baseline(method, feats, tr, te, classes)
                elif parse_method(method)[0] in FROZEN:
                    p, a, b, note = run_frozen(method, frozen, size, tr, te, classes)
                else:
                    p, a, b = run_finetune(method, args, size, tr, te, cache, classes)
                if cell is not None:
                    write_cell(cell, p, a, b, note, list(te["clip"]), classes)
            if note:
                notes.append(note)
            probs[np.flatnonzero(folds == f)] = p
            tr_speed.append(a)
            inf_speed.append(b)
        scored = np.isin(folds, test_folds)
        yy, pred = y[scored], probs[scored].argmax(1)
        m = bootstrap(yy, pred, table["event"].to_numpy()[scored], len(classes))
        per_fold = " / ".join(f"{present_macro_f1(yy[folds[scored] == f], pred[folds[scored] == f], len(classes)):.3f}"
                              for f in test_folds)
        a, fci = m["accuracy_ci"], m["macro_f1_ci"]
        lines.append(f"| {method} | {m['accuracy']:.3f} [{a[0]:.2f}, {a[1]:.2f}] | "
                     f"{m['macro_f1']:.3f} [{fci[0]:.2f}, {fci[1]:.2f}] | {per_fold} | "
                     f"{_speed(np.mean(tr_speed))} | {_speed(np.mean(inf_speed))} |")
        print(lines[-1], flush=True)
        if notes:
            chosen[method] = " / ".join(notes)
    for method, sets in chosen.items():  # after the table, which a note line would break
        lines.append(f"\n{method} chose per fold (grouped CV on that fold's training clips): {sets}")
        print(lines[-1], flush=True)
    if reused:
        lines.append(f"\n({reused} fold result(s) of this table read from {args.cells}, written by an "
                     "earlier run of the grid: their speeds are that run's)")
        print(lines[-1], flush=True)


def cell_path(args, name: str, size: int, method: str, train, test) -> Path | None:
    """Where one fold's result of one method is kept (None without --cells): named by the
    task, size, method, epochs and the fold's train and test clips, so a changed fold is a
    new cell. Not by the code or the settings fixed in it: after changing those, delete the
    folder."""
    if not args.cells:
        return None
    key = json.dumps([name, size, method, args.epochs, args.epochs3d,
                      sorted(train["clip"]), sorted(test["clip"])])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(args.cells) / f"{size}_{method}_{digest}.npz"


def write_cell(path: Path, proba, train_speed: float, infer_speed: float, note: str,
               clips: list[str], classes: list[str]) -> None:
    """One fold's probabilities with the clips (rows) and classes (columns) they belong to."""
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, proba=proba, speeds=np.array([train_speed, infer_speed]), note=np.array(note),
                 clips=np.array(clips), classes=np.array(classes))


def read_cell(path: Path, clips: list[str], classes: list[str]):
    """(proba in the order of `clips`, train speed, infer speed, note), or None when there is
    no such cell or it holds other clips or classes (then the fold is fitted again)."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        if "clips" not in z or list(z["classes"]) != list(classes) or sorted(z["clips"]) != sorted(clips):
            return None
        row = {c: i for i, c in enumerate(z["clips"])}
        proba = z["proba"][[row[c] for c in clips]]
        return proba, float(z["speeds"][0]), float(z["speeds"][1]), str(z["note"])


def setup():
    """Both clip sets (fall vs ADL), one torch thread, quiet logs; None (said why) when the
    data sets are absent."""
    logging.basicConfig(level=logging.WARNING)
    reason = missing_data("gmdcsa24-fall", "up-fall")
    if reason:
        print(f"skipped: {reason}")
        return None
    torch.set_num_threads(1)
    return load_clips("both")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 160])
    ap.add_argument("--epochs", type=int, default=6, help="2D fine-tuning epochs")
    ap.add_argument("--epochs3d", type=int, default=3, help="3D / inflated-3D epochs")
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    help=f"of {METHODS} (or any base of {BASES} with +rot / +mcrop)")
    ap.add_argument("--levers", nargs="*", default=list(LEVERS),
                    help="methods run on the cross-dataset parts only (e.g. motion crops)")
    ap.add_argument("--parts", nargs="+", default=["binary", "activity", "cross"],
                    choices=["binary", "activity", "cross"])
    ap.add_argument("--skip", nargs="*", default=[],
                    help="PART:SIZE:METHOD combinations not run (printed as skipped), "
                         "e.g. binary:160:3d-r3d; '*' matches any")
    ap.add_argument("--cells", default="",
                    help="folder keeping each fold's result, so an interrupted grid resumes where "
                         "it stopped when the same command runs again (default: keep nothing; "
                         "delete the folder after changing the code), e.g. runs/bench/clips_cells")
    args = ap.parse_args()
    for m in args.methods + args.levers:
        parse_method(m)
    both = setup()
    if both is None:
        return
    t_start = time.perf_counter()
    lines = [(f"sizes {args.sizes} px, 2D {args.epochs} epochs, 3D/i3d {args.epochs3d} epochs, "
              "torch threads 1")]
    print(lines[0])
    skipped = []

    def chosen(part, size, methods):
        keep = []
        for m in methods:
            if any(all(a in ("*", b) for a, b in zip(rule.split(":"), (part, str(size), m)))
                   for rule in args.skip):
                if f"{part}:{size}:{m}" not in skipped:
                    skipped.append(f"{part}:{size}:{m}")
            else:
                keep.append(m)
        return keep

    for size in args.sizes:
        cache = FrameCache(size)
        t0 = time.perf_counter()
        before = cache.decoded
        stacks, bad = load_stacks(list(both["clip"]), (1, 8, 16), cache)
        print(f"{size} px frames: {len(stacks)} clips ready in {time.perf_counter() - t0:.1f} s "
              f"({cache.decoded - before} decoded now, the rest from the cache), {len(bad)} failed")
        feats = Features(stacks, mcrop=bool(args.levers) and "cross" in args.parts)
        wanted = [parse_method(m) for m in args.methods + args.levers]
        frozen = {(crop, mirror): FrozenFeatures(list(both["clip"]), size, cache, crop, mirror)
                  for crop, flag in (("none", False), ("motion", True)) for mirror in (False, True)
                  if any(b in FROZEN and ("mcrop" in f) == flag and ("mirror" in f) == mirror
                         for b, f in wanted)}
        if "binary" in args.parts:
            evaluate("fall vs ADL, GMDCSA24 + UP-Fall, 4 grouped folds (93 clips)", both,
                     assign_folds(both, 4), chosen("binary", size, args.methods), args, size,
                     feats, cache, lines, frozen=frozen)
        if "activity" in args.parts:
            up = load_clips("up-fall", task="activity")
            evaluate("UP-Fall 11 activities, 3 grouped folds by event (67 clips)", up,
                     assign_folds(up, 3), chosen("activity", size, args.methods), args, size,
                     feats, cache, lines, frozen=frozen)
        if "cross" in args.parts:
            for src, dst in (("gmdcsa24", "up-fall"), ("up-fall", "gmdcsa24")):
                part = both[both["dataset"].isin([src, dst])].reset_index(drop=True)
                folds = (part["dataset"] == dst).astype(int).to_numpy()  # 1: the test set
                evaluate(f"cross-dataset fall vs ADL: train {src}, test {dst}", part, folds,
                         chosen("cross", size, args.methods + args.levers), args, size, feats,
                         cache, lines, test_folds=[1], frozen=frozen)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    print("\n".join(lines))
    if skipped:
        print("\nnot run (--skip, to fit this CPU's time): " + ", ".join(skipped))


if __name__ == "__main__":
    main()
