"""Frozen-feature clip classifiers: no network is trained, so they train in seconds on a
CPU and cannot memorise a room.

`model.kind: frozen` describes each clip by one or more feature sets (`model.features`):
- `appearance`: frozen ImageNet backbone features of the middle frame of the clip's
  `sampling.eval_frames` frames (the issue's plain baseline);
- `mhi`: the same backbone's features of the clip's motion image (facelab.clips.motion:
  frame differences colour-coded by time; the room disappears);
- `trajectory`: the silhouette trajectory's 11 numbers (facelab.clips.motion.FEATURES);
- `flow`: 8 optical-flow numbers of the moving pixels (facelab.clips.motion.FLOW_FEATURES),
  from the same 10 fps decode as the trajectory.
One standardised logistic regression (C = `model.C`, or with `model.tune_C` each set's own
C from C_GRID, chosen by grouped CV of that set's head alone) is fitted per set; the model's
probabilities are the mean of the sets' probabilities (late fusion: no set can drown the
others by its dimension). `model.features: auto` chooses the fusion at fit time: every
non-empty subset of mhi / flow / trajectory is scored by grouped CV on the training clips
alone (out-of-fold macro F1; ties go to fewer sets), so nothing is chosen on clips that are
scored later. The heads are stored as plain tensors, so model.pt loads with
`weights_only=True`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.clips.config import IMAGE_SETS, ClipConfig
from facelab.clips.crop import apply_crop
from facelab.clips.motion import MOTION_SETS, clip_features, motion_image
from facelab.clips.video import FrameCache, load_stacks, progress_bar
from facelab.errors import ConfigError, DataFormatError, ImageDecodeError


@dataclass
class LinearHead:
    """A standardised multinomial (or binary) logistic regression as plain arrays."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray       # (1, d) for two classes, (C, d) otherwise, as sklearn stores it
    intercept: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, c: float = 1.0) -> LinearHead:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        if len(np.unique(y)) != n_classes:
            raise DataFormatError(f"training clips cover {len(np.unique(y))} of {n_classes} classes")
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)
        return cls(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                   clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32))

    def proba(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary: sklearn keeps one row, the second class's
            from scipy.special import expit

            p1 = expit(z[:, 0])
            return np.stack([1.0 - p1, p1], 1)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(getattr(self, k))) for k in ("mean", "scale", "coef", "intercept")}

    @classmethod
    def from_state(cls, state: dict) -> LinearHead:
        return cls(*(np.asarray(state[k], np.float32) for k in ("mean", "scale", "coef", "intercept")))


class FrozenClipModel:
    """Feature extraction plus one linear head per feature set (see the module docstring).

    Example:
        >>> from facelab.clips.config import load_clip_config
        >>> cfg = load_clip_config(None, ["model.kind=frozen", "model.features=trajectory"])
        >>> m = FrozenClipModel(cfg, ["adl", "fall"]); m.n_classes
        2
    """

    kind = "frozen"

    def __init__(self, cfg: ClipConfig, classes: list[str], heads: dict[str, LinearHead] | None = None):
        self.cfg, self.classes, self.sets = cfg, list(classes), cfg.model.feature_sets()
        self.heads = heads or {}
        self.selection: dict[str, float] = {}  # auto / tune_C: inner-CV macro F1 per candidate
        self.heads_c: dict[str, float] = {}  # the C each head was fitted with
        self._backbone = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def eval(self) -> FrozenClipModel:  # the torch models' interface
        return self

    def backbone(self):
        if self._backbone is None:
            from facelab.models.backbone import create_backbone

            self._backbone = create_backbone(self.cfg.model.backbone, self.cfg.model.pretrained).eval()
            self._backbone.to(memory_format=torch.channels_last)
        return self._backbone

    def image_sets(self) -> list[str]:
        """The model's sets computed from frame stacks by the backbone (the others decode
        the clip themselves)."""
        return [s for s in self.sets if s in IMAGE_SETS]

    @torch.no_grad()
    def image_features(self, stacks: np.ndarray) -> dict[str, np.ndarray]:
        """Backbone features of uint8 frame stacks (B, k, H, W, 3): `appearance` (the middle
        frame) and `mhi` (the motion image), as the model's sets ask."""
        out: dict[str, np.ndarray] = {}
        wanted = self.image_sets()
        if not wanted:
            return out
        bb = self.backbone()
        mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
        std = torch.tensor(bb.std).view(1, 3, 1, 1)
        for name in wanted:
            if name == "appearance":
                imgs = stacks[:, stacks.shape[1] // 2].astype(np.float32) / 255.0
            else:
                imgs = np.stack([motion_image(s) for s in stacks])
            x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            f = bb(x)
            if self.cfg.model.mirror:  # viewpoint: left and right the same
                f = (f + bb(torch.flip(x, dims=[3]))) / 2
            out[name] = f.numpy()
        return out

    def extract(self, clips: list[str], cache: FrameCache, progress: bool = False,
                batch: int = 16) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], float]:
        """Features per set (N, d) with NaN rows for clips that failed, the failures
        (clip, reason), and clips/s of the extraction on decoded frames."""
        k, pool = self.cfg.sampling.eval_frames, self.cfg.sampling.pool
        ks = (k,) if self.cfg.data.crop == "none" else (k, pool)
        images = bool(self.image_sets())
        # frame stacks only feed the backbone sets: a motion-only model decodes each clip once
        stacks, bad = load_stacks(clips, ks, cache, progress) if images else ({}, [])
        feats: dict[str, list] = {s: [None] * len(clips) for s in self.sets}
        failed = dict(bad)

        def usable(clip: str) -> bool:
            return clip not in failed and (clip in stacks or not images)

        t0 = time.perf_counter()
        motion_sets = [s for s in self.sets if s in MOTION_SETS]
        if motion_sets:
            done: dict[str, dict] = {}  # a clip listed twice is decoded once
            with progress_bar(progress) as bar:
                task = bar.add_task("motion cues", total=len(clips))
                for i, clip in enumerate(clips):
                    if usable(clip):
                        try:
                            if clip not in done:  # beside the frame cache, in the same folder
                                done[clip] = clip_features(clip, cache_dir=cache.root / "motion",
                                                           use_cache=cache.enabled,
                                                           sets=tuple(motion_sets))
                            for name in motion_sets:
                                feats[name][i] = done[clip][name]
                        except ImageDecodeError as exc:
                            failed[clip] = str(exc)
                            bad.append((clip, str(exc)))
                    bar.advance(task)
        ok = [i for i, c in enumerate(clips) if usable(c)]
        for j in range(0, len(ok) if images else 0, batch):
            idx = ok[j:j + batch]
            st = np.stack([apply_crop(stacks[clips[i]], self.cfg.data.crop, pool)[k] for i in idx])
            for name, f in self.image_features(st).items():
                for i, row in zip(idx, f):
                    feats[name][i] = row
        speed = len(ok) / (time.perf_counter() - t0) if ok else 0.0
        out = {}
        for name, rows in feats.items():
            d = next((len(r) for r in rows if r is not None), 1)
            out[name] = np.stack([r if r is not None else np.full(d, np.nan, np.float32) for r in rows])
        return out, bad, speed

    def fit(self, feats: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None = None) -> None:
        """One head per set; with `model.features: auto`, the sets are first chosen by
        grouped CV on these clips (`groups`: one label per clip; None = each clip its own)."""
        if self.cfg.model.auto_features:
            self.sets, self.selection = choose_sets(feats, y, groups, self.n_classes, self.cfg.model.C)
        cs = {s: self.cfg.model.C for s in self.sets}
        if self.cfg.model.tune_C:
            for s in self.sets:
                cs[s], scores = choose_c(feats[s], y, groups, self.n_classes)
                self.selection.update({f"C[{s}]={c:g}": f for c, f in scores.items()})
        self.heads = {s: LinearHead.fit(feats[s], y, self.n_classes, cs[s]) for s in self.sets}
        self.heads_c = cs

    def proba(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """Mean of the sets' probabilities (N, C); NaN rows stay NaN."""
        return np.mean([self.heads[s].proba(feats[s]) for s in self.sets], axis=0).astype(np.float32)

    def check_windows(self) -> None:
        """Raise ConfigError unless the model can score frame windows: the trajectory and
        flow sets need the whole clip's own decode."""
        whole = [s for s in self.sets if s in MOTION_SETS]
        if whole:
            raise ConfigError(f"a frozen model with the {'/'.join(whole)} feature set scores whole "
                              "clips only; train one with model.features=mhi[,appearance] for --timeline")

    def score_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B, k, H, W, 3) -> probabilities (B, C), for sliding windows."""
        self.check_windows()
        return self.proba(self.image_features(frames))

    def checkpoint(self) -> dict:
        return {"kind": self.kind, "classes": self.classes, "config": self.cfg.to_dict(),
                "sets": list(self.sets), "selection": dict(self.selection),
                "heads_c": dict(self.heads_c),
                "heads": {s: h.state() for s, h in self.heads.items()}}

    @classmethod
    def from_checkpoint(cls, ck: dict, cfg: ClipConfig, where: str | Path) -> FrozenClipModel:
        heads = ck.get("heads")
        if not isinstance(heads, dict):
            raise DataFormatError(f"{where}: a frozen clip model without heads")
        model = cls(cfg, ck["classes"], {s: LinearHead.from_state(h) for s, h in heads.items()})
        if cfg.model.auto_features:  # the sets the fit chose
            model.sets = [str(s) for s in ck.get("sets", [])]
        model.selection = dict(ck.get("selection", {}))  # auto / tune_C: inner-CV scores
        model.heads_c = {str(s): float(c) for s, c in ck.get("heads_c", {}).items()}
        if set(model.heads) != set(model.sets):
            raise DataFormatError(f"{where}: heads {sorted(model.heads)} do not match "
                                  f"model.features {model.sets}")
        if model.image_sets():
            model.backbone()  # now, so missing weights fail at load time, not on the first clip
        return model


def _grouped_folds(y: np.ndarray, groups: np.ndarray | None, folds: int, what: str):
    """(train, test) index pairs of stratified grouped k-fold CV on these clips, skipping
    folds whose training part lacks a class; DataFormatError when none is left."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise DataFormatError(f"{what} needs clips of at least 2 groups to choose by CV")
    # stratified: with few groups per class, plain group folds can leave a class out of training
    pairs = [(tr, te) for tr, te in StratifiedGroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups)
             if len(np.unique(y[tr])) == len(np.unique(y))]
    if not pairs:
        raise DataFormatError(f"{what}: no CV fold's training clips cover every class")
    return pairs


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_classes: int,
             folds: int = 4) -> tuple[float, dict[float, float]]:
    """The C of C_GRID with the best out-of-fold macro F1 in grouped k-fold CV on these clips
    (ties: the stronger regularisation), and every candidate's score.

    Example:
        >>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 20)
        >>> x = y[:, None] + rng.normal(size=(40, 5))
        >>> choose_c(x, y, np.arange(40) % 8, 2)[0] in (0.01, 0.1, 1.0, 10.0)
        True
    """
    from facelab.clips.config import C_GRID
    from facelab.clips.folds import present_macro_f1

    pairs = _grouped_folds(y, groups, folds, "model.tune_C")
    scored = np.concatenate([te for _, te in pairs])
    scores = {}
    for c in C_GRID:
        pred = np.full(len(y), -1)
        for tr, te in pairs:
            pred[te] = LinearHead.fit(x[tr], y[tr], n_classes, c).proba(x[te]).argmax(1)
        scores[c] = present_macro_f1(y[scored], pred[scored], n_classes)
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    return best, scores


def choose_sets(feats: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None,
                n_classes: int, c: float, folds: int = 4) -> tuple[list[str], dict[str, float]]:
    """The fusion of AUTO_SETS with the best out-of-fold macro F1 in grouped k-fold CV on
    these clips, and every candidate's score ({"mhi+flow": 0.9, ...}). Folds whose
    training part lacks a class are skipped (their clips are not scored).

    Example:
        >>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 20)
        >>> f = {"mhi": rng.normal(size=(40, 3)), "trajectory": rng.normal(size=(40, 2)),
        ...      "flow": y[:, None] + 0.1 * rng.normal(size=(40, 2))}
        >>> choose_sets(f, y, np.arange(40) % 8, 2, 1.0)[0]
        ['flow']
    """
    from itertools import combinations

    from sklearn.model_selection import StratifiedGroupKFold

    from facelab.clips.config import AUTO_SETS
    from facelab.clips.folds import present_macro_f1

    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise DataFormatError("model.features: auto needs clips of at least 2 groups to choose by CV")
    oof = {s: np.full((len(y), n_classes), np.nan) for s in AUTO_SETS}
    # stratified: with few groups per class, plain group folds can leave a class out of training
    for tr, te in StratifiedGroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups):
        if len(np.unique(y[tr])) < n_classes:
            continue
        for s in AUTO_SETS:
            oof[s][te] = LinearHead.fit(feats[s][tr], y[tr], n_classes, c).proba(feats[s][te])
    scored = ~np.isnan(oof[AUTO_SETS[0]]).any(1)
    if not scored.any():
        raise DataFormatError("model.features: auto: no CV fold's training clips cover every class")
    scores: dict[str, float] = {}
    best: tuple[str, ...] = ()
    for r in range(1, len(AUTO_SETS) + 1):
        for combo in combinations(AUTO_SETS, r):
            p = np.mean([oof[s][scored] for s in combo], axis=0)
            scores["+".join(combo)] = present_macro_f1(y[scored], p.argmax(1), n_classes)
            if not best or scores["+".join(combo)] > scores["+".join(best)]:
                best = combo
    return list(best), scores
