"""Train, predict and cross-validate clip classifiers; run folders are resumable.

A run folder holds config.yaml, last.pt (model, optimizer, epoch: resume continues after
the last finished epoch, re-seeded per epoch so it matches an uninterrupted run), model.pt
(final weights, classes, config), log.csv and skipped.csv (clips that could not be decoded).
Clips that fail to decode are listed and left out; the batch goes on.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from facelab.clips.config import ClipConfig
from facelab.clips.crop import apply_crop
from facelab.clips.frozen import FrozenClipModel
from facelab.clips.model import ClipModel
from facelab.clips.timeline import DetectConfig, sliding_probs
from facelab.clips.video import FrameCache, decode_timed, load_stacks
from facelab.clips.video import progress_bar as _progress
from facelab.config import build_dataclass
from facelab.errors import CheckpointError, DataFormatError
from facelab.io.atomic import atomic_path
from facelab.io.torchfile import load_torch_file
from facelab.runtime import tune_allocator

log = logging.getLogger(__name__)
FORMAT = "facelab-clips-1"


def make_cache(cfg: ClipConfig) -> FrameCache:
    return FrameCache(cfg.data.size, cfg.data.cache_dir or None, enabled=cfg.data.cache)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3).float().div_(255)


def _augment(x: torch.Tensor, cfg: ClipConfig, g: torch.Generator) -> torch.Tensor:
    out = []
    for clip in x:  # (T, 3, H, W): one flip and one angle per clip
        if cfg.augment.hflip and torch.rand(1, generator=g).item() < 0.5:
            clip = clip.flip(-1)
        if cfg.augment.rotate > 0:
            angle = (torch.rand(1, generator=g).item() * 2 - 1) * cfg.augment.rotate
            clip = TF.rotate(clip, angle, interpolation=TF.InterpolationMode.BILINEAR)
        out.append(clip)
    return torch.stack(out)


def _train_indices(pool: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """One random pool frame inside each of `k` equal segments (k=1: any pool frame)."""
    return np.minimum(((np.arange(k) + rng.random(k)) * pool / k).astype(int), pool - 1)


@dataclass
class FitResult:
    out_dir: Path
    classes: list[str]
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_clips_per_s: float = 0.0


def _write_skipped(path: Path, bad: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip", "reason"])
        w.writerows(bad)


def _classes(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Sorted classes of the decodable training clips and each clip's class index."""
    if table.empty:
        raise DataFormatError("no training clip could be decoded (see skipped.csv)")
    classes = sorted(table["label"].unique())
    if len(classes) < 2:
        raise DataFormatError(f"training clips have one class only ({classes[0]!r})")
    return classes, table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def fit(cfg: ClipConfig, table: pd.DataFrame, out_dir: str | Path, resume: bool = True,
        progress: bool = False, cache: FrameCache | None = None) -> FitResult:
    """Train one model on every decodable clip of `table` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tune_allocator()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = cache or make_cache(cfg)
    if cfg.model.kind == "frozen":
        return _fit_frozen(cfg, table, out, progress, cache)
    s = cfg.sampling
    stacks, bad = load_stacks(list(table["clip"]), (s.pool, s.eval_frames), cache, progress)
    stacks = {c: apply_crop(st, cfg.data.crop, s.pool) for c, st in stacks.items()}
    _write_skipped(out / "skipped.csv", bad)
    table = table[table["clip"].isin(stacks)].reset_index(drop=True)
    classes, y = _classes(table)
    pools = np.stack([stacks[c][s.pool] for c in table["clip"]])  # (N, P, H, W, 3)

    torch.manual_seed(cfg.seed)
    model = ClipModel(cfg.model, len(classes))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    start, history = 0, []
    last = out / "last.pt"
    cfg.save(out / "config.yaml")
    if resume and last.is_file():
        ck = load_torch_file(last, "clip checkpoint")
        # through the dataclass, so a checkpoint from before a config field was added compares equal
        saved = build_dataclass(ClipConfig, ck.get("config") or {}, str(last)).to_dict()
        if saved != cfg.to_dict() or ck.get("classes") != classes:
            raise CheckpointError(f"{last} was written with another config or classes; "
                                  "use a new run folder or --no-resume")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        start, history = ck["epoch"] + 1, ck["history"]
        log.info("resuming %s after epoch %d", out, ck["epoch"])
    train_s, seen = 0.0, 0
    with _progress(progress) as bar:
        task = bar.add_task(f"train {out.name}", total=cfg.epochs, completed=start)
        for epoch in range(start, cfg.epochs):
            seed = cfg.seed * 1009 + epoch
            rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
            model.train()
            order = rng.permutation(len(table))
            t0, losses, correct = time.perf_counter(), [], 0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                frames = np.stack([pools[j][_train_indices(s.pool, s.train_frames, rng)] for j in idx])
                x = _augment(_to_tensor(frames), cfg, g)
                target = torch.from_numpy(y[idx])
                logits = model(x)
                loss = F.cross_entropy(logits, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item() * len(idx))
                correct += int((logits.argmax(1) == target).sum())
            sched.step()
            dt = time.perf_counter() - t0
            train_s, seen = train_s + dt, seen + len(order)
            history.append({"epoch": epoch, "train_loss": float(np.sum(losses) / len(order)),
                            "train_acc": correct / len(order), "clips_per_s": len(order) / dt})
            with atomic_path(last, ".pt") as tmp:
                torch.save({"format": FORMAT, "model": model.state_dict(), "optim": opt.state_dict(),
                            "sched": sched.state_dict(), "epoch": epoch, "history": history,
                            "config": cfg.to_dict(), "classes": classes}, tmp)
            bar.advance(task)
    pd.DataFrame(history).to_csv(out / "log.csv", index=False)
    with atomic_path(out / "model.pt", ".pt") as tmp:
        torch.save({"format": FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
                    "classes": classes}, tmp)
    return FitResult(out, classes, history, bad, seen / train_s if train_s else 0.0)


def _fit_frozen(cfg: ClipConfig, table: pd.DataFrame, out: Path, progress: bool,
                cache: FrameCache) -> FitResult:
    """Features of every clip, one logistic regression per feature set (seconds on a CPU).
    A folder holding a run of another config is refused, as for trained models (a refit of
    the same config replaces model.pt: nothing is lost)."""
    saved_cfg = out / "config.yaml"
    if saved_cfg.is_file():
        from facelab.clips.config import load_clip_config

        if load_clip_config(saved_cfg).to_dict() != cfg.to_dict():
            raise CheckpointError(f"{out} holds a run of another config; use a new run folder")
    t0 = time.perf_counter()
    feats, bad, _ = FrozenClipModel(cfg, []).extract(list(table["clip"]), cache, progress)
    _write_skipped(out / "skipped.csv", bad)
    ok = ~np.isnan(np.concatenate(list(feats.values()), 1)).any(1)
    table = table[ok].reset_index(drop=True)
    classes, y = _classes(table)
    feats = {k: v[ok] for k, v in feats.items()}
    model = FrozenClipModel(cfg, classes)
    model.fit(feats, y, table["group"].to_numpy() if "group" in table else None)
    dt = time.perf_counter() - t0
    cfg.save(out / "config.yaml")
    train_acc = float((model.proba(feats).argmax(1) == y).mean())
    history = [{"epoch": 0, "train_acc": train_acc, "clips_per_s": len(table) / dt,
                "features": ",".join(model.sets),
                "C": ",".join(f"{s}:{model.heads_c[s]:g}" for s in model.sets)}]
    pd.DataFrame(history).to_csv(out / "log.csv", index=False)
    with atomic_path(out / "model.pt", ".pt") as tmp:
        torch.save({"format": FORMAT, **model.checkpoint()}, tmp)
    return FitResult(out, classes, history, bad, len(table) / dt)


def load_model(run: str | Path) -> tuple[ClipModel | FrozenClipModel, ClipConfig, list[str]]:
    """The final model of a run folder (or a model.pt file); read as data only, so a
    crafted file cannot run code."""
    path = Path(run)
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path} not found; train first (facelab clips train)")
    ck = load_torch_file(path, "clip model")
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a facelab clip model")
    cfg = build_dataclass(ClipConfig, ck["config"], str(path))
    if ck.get("kind") == "frozen":
        return FrozenClipModel.from_checkpoint(ck, cfg, path), cfg, list(ck["classes"])
    cfg.model.pretrained = ""  # the weights come from the checkpoint
    model = ClipModel(cfg.model, len(ck["classes"]))
    model.load_state_dict(ck["model"])
    return model.eval(), cfg, list(ck["classes"])


@torch.no_grad()
def predict_clips(model: ClipModel | FrozenClipModel, cfg: ClipConfig, clips: list[str],
                  cache: FrameCache | None = None, progress: bool = False,
                  batch_size: int = 16) -> tuple[np.ndarray, list[tuple[str, str]], float]:
    """Class probabilities (N, C) with NaN rows for clips that failed, the failures, and
    clips/s of the model on decoded frames. A frozen model samples frames as its own config
    (the one load_model returned with it) says."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = cache or make_cache(cfg)
    if isinstance(model, FrozenClipModel):
        feats, bad, speed = model.extract(clips, cache, progress)
        return model.proba(feats), bad, speed
    k, pool = cfg.sampling.eval_frames, cfg.sampling.pool
    stacks, bad = load_stacks(clips, (k,) if cfg.data.crop == "none" else (k, pool), cache, progress)
    stacks = {c: apply_crop(st, cfg.data.crop, pool) for c, st in stacks.items()}
    model.eval()
    probs = np.full((len(clips), model.n_classes), np.nan, np.float32)
    ok = [i for i, c in enumerate(clips) if c in stacks]
    t0 = time.perf_counter()
    for i in range(0, len(ok), batch_size):
        idx = ok[i:i + batch_size]
        x = _to_tensor(np.stack([stacks[clips[j]][k] for j in idx]))
        probs[idx] = torch.softmax(model(x), 1).numpy()
    dt = time.perf_counter() - t0
    return probs, bad, (len(ok) / dt if dt > 0 and ok else 0.0)


def clip_scorer(model: ClipModel | FrozenClipModel):
    """uint8 frame stacks (B, k, H, W, 3) -> class probabilities (B, C), for
    facelab.clips.timeline.sliding_probs."""
    if isinstance(model, FrozenClipModel):
        model.check_windows()
        return model.score_frames
    def score(frames: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(_to_tensor(frames)), 1).numpy()
    return score


def predict_timeline(model: ClipModel | FrozenClipModel, cfg: ClipConfig, classes: list[str], clip: str | Path,
                     det: DetectConfig, fps: float = 10.0) -> pd.DataFrame:
    """Sliding-window class probabilities over a (long) video; decoded at <= `fps` frames/s
    and scaled as the model was trained. Raises ImageDecodeError for a bad file."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    score = clip_scorer(model.eval())
    frames, times = decode_timed(clip, cfg.data.size, fps)
    return sliding_probs(frames, times, score, classes,
                         cfg.sampling.eval_frames, det, cfg.data.crop, cfg.sampling.pool)


def _labels_to_ids(labels, classes: list[str]) -> np.ndarray:
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataFormatError(f"labels {unknown} are not classes of the model ({classes})")
    return np.array([classes.index(v) for v in labels])


def cross_validate(cfg: ClipConfig, table: pd.DataFrame, out_dir: str | Path, resume: bool = True,
                   progress: bool = False) -> dict:
    """Grouped k-fold (cfg.data.folds): one run per fold in OUT/fold<i>, out-of-fold
    predictions in OUT/predictions.csv, and the report (metrics.json, report.md, confusion.png).
    A fold whose predictions exist is not trained again."""
    from facelab.clips.folds import assign_folds
    from facelab.clips.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    folds = assign_folds(table, cfg.data.folds, cfg.seed)
    classes = sorted(table["label"].unique())
    cache = make_cache(cfg)
    probs = np.full((len(table), len(classes)), np.nan, np.float32)
    speeds = []
    for f in range(cfg.data.folds):
        fold_dir = out / f"fold{f}"
        pred_path = fold_dir / "test_predictions.csv"
        test = np.flatnonzero(folds == f)
        if resume and pred_path.is_file():
            p = pd.read_csv(pred_path)
            probs[test] = p[[f"p_{c}" for c in classes]].to_numpy()
            continue
        res = fit(cfg, table.iloc[np.flatnonzero(folds != f)], fold_dir, resume, progress, cache)
        if res.classes != classes:
            raise DataFormatError(f"fold {f}: training part lacks classes "
                                  f"{sorted(set(classes) - set(res.classes))}; use fewer folds")
        model, _, _ = load_model(fold_dir)
        p, _, speed = predict_clips(model, cfg, list(table["clip"].iloc[test]), cache)
        probs[test] = p
        speeds.append({"fold": f, "train_clips_per_s": res.train_clips_per_s,
                       "infer_clips_per_s": speed})
        pd.DataFrame({"clip": table["clip"].iloc[test].to_numpy(),
                      **{f"p_{c}": p[:, j] for j, c in enumerate(classes)}}).to_csv(pred_path, index=False)
    metrics = write_report(out, table.assign(fold=folds), probs, classes,
                           title=f"{cfg.data.train} {cfg.data.task}: {cfg.data.folds}-fold grouped CV")
    metrics["speed"] = speeds
    return metrics


def evaluate_run(run: str | Path, spec: str | None = None, task: str | None = None,
                 out: str | Path | None = None, progress: bool = False) -> dict:
    """Evaluate a trained run on a clip set (default: its own training set, which flatters it)
    and write the report to OUT (default RUN/eval_<set>)."""
    from facelab.clips.dataset import load_clips
    from facelab.clips.report import write_report

    model, cfg, classes = load_model(run)
    spec = spec or cfg.data.train
    table = load_clips(spec, task or cfg.data.task)
    _labels_to_ids(table["label"], classes)
    probs, _, _ = predict_clips(model, cfg, list(table["clip"]), progress=progress)
    out = Path(out) if out else Path(run) / f"eval_{Path(spec).stem}"
    return write_report(out, table, probs, classes, title=f"{Path(run).name} on {spec}")

