"""Clip training configuration: a dataclass tree read from YAML with `key=value` overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facelab.clips.crop import CROPS
from facelab.config import apply_overrides, build_dataclass, read_yaml
from facelab.errors import ConfigError

KINDS = ("2d", "3d", "i3d", "frozen")
FEATURE_SETS = ("appearance", "mhi", "trajectory", "flow")  # of model.kind frozen (facelab.clips.frozen)
IMAGE_SETS = ("appearance", "mhi")  # of those, the ones the backbone computes from frame stacks
# model.features: auto picks among the non-empty subsets of these by grouped CV on the
# training clips; appearance is left out because within one data set the room it sees
# helps, which is what does not carry over to other rooms
AUTO_SETS = ("mhi", "flow", "trajectory")
# model.tune_C picks each set's C among these by grouped CV on the training clips
C_GRID = (0.01, 0.1, 1.0, 10.0)
ARCHS_3D = ("r3d_18", "mc3_18", "r2plus1d_18")


@dataclass
class ClipDataConfig:
    """Attributes:
        train: clip set to train on: `gmdcsa24`, `up-fall`, `both`, a labels CSV or a folder.
        task: `label` (fall vs adl) or `activity` (UP-Fall's 11 activities).
        size: frames are scaled to size x size (whole frame).
        folds: grouped cross-validation folds for `clips train --cv` (GMDCSA24 with 4 folds is
            leave-one-subject-out; UP-Fall folds never split an `event`).
        cache: keep decoded frames on disk (facelab.paths.cache_root()/clips, or cache_dir;
            a frozen model's trajectory and flow features go to its `motion/` sub-folder).
        crop: `none` (whole frames) or `motion`: every frame cut to the square around what
            moves in the clip (facelab.clips.crop; a person-centred crop without a detector).
    """

    train: str = "both"
    task: str = "label"
    size: int = 112
    folds: int = 4
    cache: bool = True
    cache_dir: str = ""
    crop: str = "none"


@dataclass
class ClipModelConfig:
    """Attributes:
        kind: `2d` (an image backbone per frame, scores averaged over frames), `3d`
            (a torchvision video ResNet, from scratch) or `i3d` (the 2D backbone inflated to
            3D, starting from its 2D weights: I3D-style, since no Kinetics weights are offline)
            or `frozen` (no network trained: frozen backbone features and/or motion cues, one
            logistic regression per feature set, probabilities averaged; facelab.clips.frozen).
        backbone: 2D backbone name from facelab.models (mobilenet_v2 has offline ImageNet weights).
        pretrained: `imagenet`, '' (random) or a .pth file (2D only).
        freeze: frozen early backbone stages (2d, i3d; mobilenet_v2 has 19).
        time_kernel: temporal extent of the inflated spatial convolutions (i3d; odd).
        arch3d: r3d_18 | mc3_18 | r2plus1d_18 (3D, random init: no Kinetics weights offline).
        dropout: before the linear classifier.
        features: frozen only, a comma list of `appearance` (backbone features of the middle
            frame), `mhi` (backbone features of the clip's motion image), `trajectory`
            (the moving silhouette's box over time: 11 camera-independent numbers) and
            `flow` (optical flow of the moving pixels: 8 numbers, speeds in person heights
            per s, shares and ratios); or `auto`: the subset of mhi / flow / trajectory
            with the best macro F1 in grouped CV on the training clips (by `group`), chosen
            at fit time (mhi is a candidate, so `auto` needs what mhi needs: ImageNet
            weights and sampling.eval_frames >= 2).
        C: frozen only, inverse L2 strength of the logistic regressions.
        mirror: frozen only: the backbone sets (appearance, mhi) average each image's
            features with its mirror image's, so a fall to the left and one to the right
            look alike (cameras see the same action from either side).
        tune_C: frozen only: each set's C is chosen from C_GRID (0.01, 0.1, 1, 10) by
            grouped CV macro F1 on the training clips (by `group`) at fit time, instead of
            `C` for all (small training sets may want stronger regularisation). Each set's C
            is scored on that set's own head, not on the fused probabilities; with
            `features: auto` the sets are chosen first, at `C`.
    """

    kind: str = "2d"
    backbone: str = "mobilenet_v2"
    pretrained: str = "imagenet"
    freeze: int = 12
    arch3d: str = "r3d_18"
    time_kernel: int = 3
    dropout: float = 0.2
    features: str = "mhi,flow,trajectory"
    C: float = 1.0
    mirror: bool = False
    tune_C: bool = False

    @property
    def auto_features(self) -> bool:
        """`features: auto`: the fit chooses the sets (facelab.clips.frozen.choose_sets)."""
        return self.features.strip() == "auto"

    def feature_sets(self) -> list[str]:
        """`features` as a list of names (validated by ClipConfig for kind frozen); for
        `auto`, every candidate set (the fit keeps a subset)."""
        if self.auto_features:
            return list(AUTO_SETS)
        return [f.strip() for f in self.features.split(",") if f.strip()]


@dataclass
class ClipSamplingConfig:
    """Attributes:
        pool: segment-centre frames cached per clip for training; random frames are drawn from it.
        train_frames: frames per clip per training step: 1 = one random frame (2D single
            frame), K = one random frame in each of K segments (TSN-style 2D, or a 3D input).
        eval_frames: frames at evaluation: 1 = the middle frame, K = K uniform frames whose
            scores are averaged (2D) or stacked (3D).
    """

    pool: int = 16
    train_frames: int = 1
    eval_frames: int = 1


@dataclass
class ClipAugmentConfig:
    """Attributes:
        rotate: random rotation of up to +-rotate degrees, one angle per clip (0 = off;
            the seed found heavy rotation hurt, as falls look like rotations).
        hflip: random horizontal flip.
    """

    rotate: float = 0.0
    hflip: bool = True


@dataclass
class ClipConfig:
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    sampling: ClipSamplingConfig = field(default_factory=ClipSamplingConfig)
    augment: ClipAugmentConfig = field(default_factory=ClipAugmentConfig)
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.model.kind not in KINDS:
            raise ConfigError(f"model.kind {self.model.kind!r} unknown; use one of {KINDS}")
        if self.model.kind == "3d" and self.model.arch3d not in ARCHS_3D:
            raise ConfigError(f"model.arch3d {self.model.arch3d!r} unknown; use one of {ARCHS_3D}")
        if self.data.crop not in CROPS:
            raise ConfigError(f"data.crop {self.data.crop!r} unknown; use one of {CROPS}")
        s = self.sampling
        if min(s.pool, s.train_frames, s.eval_frames) < 1 or s.train_frames > s.pool:
            raise ConfigError("sampling: pool, train_frames and eval_frames must be >= 1 and "
                              "train_frames <= pool")
        if self.model.kind in ("3d", "i3d") and s.train_frames != s.eval_frames:
            raise ConfigError(f"a {self.model.kind} model needs sampling.train_frames == "
                              "sampling.eval_frames")
        if self.model.kind == "i3d" and (self.model.time_kernel < 1 or self.model.time_kernel % 2 == 0):
            raise ConfigError(f"model.time_kernel={self.model.time_kernel}: use an odd number >= 1")
        if self.model.kind == "frozen":
            sets = self.model.feature_sets()
            if not sets or set(sets) - set(FEATURE_SETS) or self.model.C <= 0:
                raise ConfigError(f"model.features {self.model.features!r}: use a comma list of "
                                  f"{FEATURE_SETS}, or auto; model.C must be > 0")
            if "mhi" in sets and s.eval_frames < 2:
                raise ConfigError("the mhi feature set needs sampling.eval_frames >= 2 (e.g. 16)")
            if set(sets) & set(IMAGE_SETS) and self.model.pretrained != "imagenet":
                raise ConfigError("a frozen model's backbone must be pretrained: imagenet (its "
                                  "features are what the heads learn on; random or file weights "
                                  "are not stored in model.pt)")
        if self.model.tune_C and self.model.kind != "frozen":
            raise ConfigError("model.tune_C is for frozen models (their logistic regressions' C)")
        if self.model.mirror and self.model.kind != "frozen":
            raise ConfigError("model.mirror is for frozen models; trained models see mirror "
                              "images through augment.hflip already")
        if self.data.size < 16 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("data.size >= 16, epochs >= 1 and batch_size >= 1 are required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_clip_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     base: dict[str, Any] | None = None) -> ClipConfig:
    """YAML (or `base`, or defaults) plus `section.key=value` overrides.

    Example:
        >>> load_clip_config(None, ["epochs=2", "augment.rotate=30"]).augment.rotate
        30
    """
    values: dict[str, Any] = read_yaml(path) if path is not None else dict(base or {})
    values = apply_overrides(values, overrides or [])
    return build_dataclass(ClipConfig, values, str(path or "config"))
