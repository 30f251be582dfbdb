"""Ensembles: soft or hard voting over several models, with optional flip TTA.

Members are checkpoints or run folders: the folds of one k-fold run (pass its folder),
several checkpoints of one run, or runs of different architectures and input sizes (each
member reads pixels prepared under its own data settings).

- soft: the mean of the members' per-task probabilities.
- hard: per task, the class most members predict; ties go to the tied class with the
  highest mean probability. Its "probabilities" are (votes + mean_prob / 2) / (M + 1/2):
  vote shares that sum to 1 and whose argmax is the vote (the mean term only breaks ties).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

VOTES = ("soft", "hard")


def soft_vote(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean per-task probabilities.

    Example:
        >>> p = soft_vote([{"g": np.array([[.9, .1]])}, {"g": np.array([[.3, .7]])}])
        >>> p["g"].round(2).tolist()
        [[0.6, 0.4]]
    """
    return {t: np.mean([m[t] for m in members], axis=0) for t in members[0]}


def hard_vote(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Majority of the members' argmax per task; ties broken by the mean probability.

    Example:
        >>> ms = [{"g": np.array([[.9, .1]])}, {"g": np.array([[.4, .6]])},
        ...       {"g": np.array([[.45, .55]])}]
        >>> int(hard_vote(ms)["g"].argmax(1)[0])  # 2 of 3 vote class 1 though soft says 0
        1
    """
    out = {}
    for t in members[0]:
        stack = np.stack([np.nan_to_num(m[t]) for m in members])  # (M, N, k)
        votes = np.eye(stack.shape[2])[stack.argmax(2)].sum(0)  # (N, k)
        out[t] = (votes + stack.mean(0) / 2) / (len(members) + 0.5)
    return out


def vote(members: list[dict[str, np.ndarray]], how: str = "soft") -> dict[str, np.ndarray]:
    """Combine member probabilities by `how` ("soft" or "hard")."""
    if not members:
        raise ConfigError("an ensemble needs at least one member")
    if how == "soft":
        return soft_vote(members)
    if how == "hard":
        return hard_vote(members)
    raise ConfigError(f"vote {how!r} unknown; use one of {VOTES}")


def expand_runs(runs: list[str | Path]) -> list[Path]:
    """Checkpoint files / run folders; a k-fold folder (fold_*/ inside) stands for its folds.

    Example:
        >>> expand_runs(["runs/kf", "runs/resnet/best.pt"])  # doctest: +SKIP
        [PosixPath('runs/kf/fold_0'), ..., PosixPath('runs/resnet/best.pt')]
    """
    paths: list[Path] = []
    for run in runs:
        p = Path(run)
        if p.is_file() or (p / "best.pt").is_file() or (p / "last.pt").is_file():
            paths.append(p)
            continue
        folds = sorted(
            (d for d in p.glob("fold_*") if (d / "best.pt").is_file()),
            key=lambda d: int(d.name.split("_")[1]) if d.name.split("_")[1].isdigit() else 0,
        )
        if not folds:
            raise CheckpointError(
                f"{p}: no checkpoint (best.pt / last.pt) and no fold_*/ run "
                "folders inside; pass run folders, .pt files or a k-fold folder"
            )
        paths.extend(folds)
    return paths


def ensemble_pixels(
    runs: list[str | Path], data, indices: np.ndarray, how: str = "soft", tta: bool | None = None
) -> dict[str, np.ndarray]:
    """Voted per-task probabilities for rows `indices` of a PreparedData.

    Each member reads pixels made under its own data settings (size, crop); caches are
    shared between members with equal settings. `tta=None` uses each member's own setting.
    Members trained with `calibrate` vote with their decision biases applied, as in
    `facelab predict`.
    """
    from facelab.data.cache import PixelCache
    from facelab.predict.run import AttributeRun

    caches: dict = {}
    members = []
    for path in expand_runs(runs):
        member = AttributeRun.load(path, tta=tta)  # each member decides as it was trained to
        if member.settings not in caches:
            caches[member.settings] = PixelCache.build(data.table, member.settings)
        members.append(member.predict_pixels(caches[member.settings].pixels, indices))
    return vote(members, how)


def predict_ensemble(
    runs: list[str | Path],
    table: pd.DataFrame,
    how: str = "soft",
    tta: bool | None = None,
    progress=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like facelab.predict.predict.predict_table, with the members' probabilities voted.

    Example:
        >>> preds, bad = predict_ensemble(["runs/kf"], folder_table("photos"), "soft", tta=True)  # doctest: +SKIP
    """
    from facelab.predict.predict import predict_table
    from facelab.predict.probs import frame_to_probs, prediction_frame

    frames, bads = [], []
    for path in expand_runs(runs):
        preds, bad = predict_table(path, table, tta, progress)
        frames.append(preds)
        bads.append(bad)
    ok = np.logical_and.reduce([f["ok"].to_numpy(bool) for f in frames])
    out = prediction_frame(table, vote([frame_to_probs(f) for f in frames], how), ok)
    out["crop_stage"] = frames[0]["crop_stage"].to_numpy()
    return out, pd.concat(bads, ignore_index=True).drop_duplicates("path", ignore_index=True)
