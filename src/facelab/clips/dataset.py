"""Clip data sets as one table: clip (absolute path), label, subject, group, event, dataset.

- `group`: what grouped folds keep on one side (GMDCSA24: the subject, so folds are
  leave-one-subject-out; UP-Fall: the `event`, so both camera views of a trial stay together).
- `event`: one recording (GMDCSA24: the clip; UP-Fall: the trial, two views). The bootstrap
  resamples events, so two views of one trial are never counted as independent.

Sources: a labels CSV (`clip,label[,subject][,group]`, clip paths relative to the CSV's
folder), a folder with one sub-folder per class, or a named set under $FACELAB_DATA:
`gmdcsa24` (gmdcsa24-fall/), `up-fall`, or `both` (the two together).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from facelab.errors import DataFormatError
from facelab.paths import dataset_dir

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
COLUMNS = ("clip", "label", "subject", "group", "event", "dataset")
TASKS = ("label", "activity")  # label: the CSV's label (fall/adl); activity: UP-Fall's 11 classes
NAMED = {"gmdcsa24": "gmdcsa24-fall", "gmdcsa24-fall": "gmdcsa24-fall", "up-fall": "up-fall",
         "upfall": "up-fall"}


def _finish(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    df = df.copy()
    df["dataset"] = dataset
    for col in ("subject", "group", "event"):
        df[col] = df[col].astype(str)
    df["label"] = df["label"].astype(str)
    return df.reset_index(drop=True)


def from_csv(path: str | Path, dataset: str | None = None) -> pd.DataFrame:
    """A labels CSV: `clip,label` and optional `subject`, `group`, `event` columns."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"labels CSV {path} not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"clip", "label"} - set(df.columns)
    if missing:
        raise DataFormatError(f"{path}: missing column(s) {sorted(missing)}; need clip,label"
                              "[,subject][,group]")
    if not len(df):
        raise DataFormatError(f"{path}: no rows")
    df["clip"] = [str((path.parent / c).resolve()) for c in df["clip"]]
    if "subject" not in df:
        df["subject"] = df["clip"]
    if "group" not in df:
        df["group"] = df["subject"]
    if "event" not in df:
        df["event"] = df["clip"]
    return _finish(df, dataset or path.parent.name)


def from_folder(root: str | Path) -> pd.DataFrame:
    """One sub-folder per class holding video files (recursively)."""
    root = Path(root)
    rows = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cls.rglob("*")):
            if f.suffix.lower() in VIDEO_EXTENSIONS:
                rows.append({"clip": str(f.resolve()), "label": cls.name})
    if not rows:
        raise DataFormatError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in "
                              "class sub-folders")
    df = pd.DataFrame(rows)
    df["subject"] = df["group"] = df["event"] = df["clip"]
    return _finish(df, root.name)


def gmdcsa24(root: str | Path | None = None) -> pd.DataFrame:
    """GMDCSA24 fall/adl clips; groups are subjects (leave-one-subject-out)."""
    root = Path(root) if root else dataset_dir("gmdcsa24-fall")
    df = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    out = pd.DataFrame({
        "clip": [str((root / c).resolve()) for c in df["clip"]],
        "label": df["label"],
        "subject": "g" + df["subject"],
        "segments": df["segments"], "fps_frames": df["frames"],
    })
    out["group"] = out["subject"]
    out["event"] = out["clip"]
    out["activity"] = out["label"]
    return _finish(out, "gmdcsa24")


def up_fall(root: str | Path | None = None) -> pd.DataFrame:
    """UP-Fall clips (fall/adl and 11 activities); groups and events are trials (`event`)."""
    root = Path(root) if root else dataset_dir("up-fall")
    df = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    out = pd.DataFrame({
        "clip": [str((root / c).resolve()) for c in df["clip"]],
        "label": df["label"], "subject": df["subject"], "group": df["event"],
        "event": df["event"], "activity": df["activity"], "camera": df["camera"],
    })
    return _finish(out, "up-fall")


def load_clips(spec: str, task: str = "label") -> pd.DataFrame:
    """A clip table from a named set (`gmdcsa24`, `up-fall`, `both`), a CSV or a class folder;
    `task` picks the label column (`label`, or `activity` for UP-Fall's 11 activities).

    Example:
        >>> load_clips("up-fall", task="activity").label.nunique()  # doctest: +SKIP
        11
    """
    if task not in TASKS:
        raise DataFormatError(f"task {task!r} unknown; use one of {TASKS}")
    key = spec.lower()
    if key == "both":
        df = pd.concat([gmdcsa24(), up_fall()], ignore_index=True)
    elif key in NAMED:
        df = gmdcsa24() if NAMED[key] == "gmdcsa24-fall" else up_fall()
    else:
        p = Path(spec).expanduser()
        if p.is_dir():
            df = from_folder(p) if not (p / "labels.csv").is_file() else from_csv(p / "labels.csv")
        elif p.suffix.lower() == ".csv":
            df = from_csv(p)
        else:
            raise DataFormatError(f"clip set {spec!r}: not a named set (gmdcsa24, up-fall, both), "
                                  "a labels CSV or a folder")
    if task == "activity":
        if "activity" not in df or (df["activity"] == "").any():
            raise DataFormatError(f"clip set {spec!r} has no activity labels for every clip")
        df = df.assign(label=df["activity"])
    return df.reset_index(drop=True)
