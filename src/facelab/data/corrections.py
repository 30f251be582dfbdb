"""Label corrections: a user-edited CSV (path,task,old,new) applied to prepared targets.

The file is what `facelab clean` exports and a person reviews (the seeds' "label correction"
file). Each row names one image, one task, the label it has now and the label it should have:

    path,task,old,new
    /data/utk/images/23_1_0_x.jpg,gender,female,male
    /data/masks/images/m12.jpg#10_20_40_60,mask,correct,incorrect

`path` is the row key (see :func:`row_keys`): the image path, plus `#x1_y1_x2_y2` when one
image holds several faces; a sample id or a path relative to the CSV's folder also works.
A blank `new` keeps the label (rows not yet reviewed); `new = missing` removes the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.labels import CLASS_NAMES, MISSING, TASKS, parse_task_value
from facelab.errors import DataFormatError

COLUMNS = ("path", "task", "old", "new")
_MISSING_WORDS = {"missing", "unknown", "?", "-1"}


def row_keys(table: pd.DataFrame) -> np.ndarray:
    """A unique key per sample-table row: its path, plus the box when a path repeats (no
    commas, so the key needs no quoting in a hand-edited CSV).

    Example:
        >>> t = pd.DataFrame({"path": ["a.jpg", "b.jpg", "b.jpg"], "x1": [0, 1, 5],
        ...                   "y1": [0, 2, 6], "x2": [9, 3, 7], "y2": [9, 4, 8]})
        >>> row_keys(t).tolist()
        ['a.jpg', 'b.jpg#1_2_3_4', 'b.jpg#5_6_7_8']
    """
    paths = table["path"].astype(str).to_numpy()
    repeated = pd.Series(paths).duplicated(keep=False).to_numpy()
    keys = paths.astype(object).copy()
    for i in np.flatnonzero(repeated):
        box = "_".join(
            str(int(v)) if np.isfinite(v) else "nan"
            for v in table.iloc[i][["x1", "y1", "x2", "y2"]].astype(float)
        )
        keys[i] = f"{paths[i]}#{box}"
    return keys


def parse_label(task: str, value: object, where: str) -> int:
    """A class index from a label name, alias or index; MISSING for 'missing'/'-1'.

    Example:
        >>> parse_label("age", ">=60", "x"), parse_label("mask", "incorrect", "x")
        (2, 1)
    """
    text = str(value).strip().lower()
    if text in _MISSING_WORDS:
        return MISSING
    if task == "age":
        names = [n.lower() for n in CLASS_NAMES["age"]]
        if text in names:
            return names.index(text)
        if text in ("0", "1", "2"):
            return int(text)
        raise DataFormatError(
            f"{where}: unknown age label {value!r}; use one of "
            f"{', '.join(CLASS_NAMES['age'])}, 0, 1, 2 or missing"
        )
    names = [n.lower() for n in CLASS_NAMES[task]]
    if text in names:
        return names.index(text)
    return parse_task_value(task, text, where)


def read_corrections(path: str | Path) -> pd.DataFrame:
    """Read and check a corrections CSV's shape (columns, tasks, no duplicate entries)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"corrections file {path} not found; check data.corrections")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataFormatError(f"{path}: cannot parse as CSV ({exc})") from exc
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
            "A corrections file needs columns path,task,old,new"
        )
    df["task"] = df["task"].str.strip().str.lower()
    bad = df[~df["task"].isin(TASKS)]
    if len(bad):
        raise DataFormatError(
            f"{path} row {bad.index[0] + 2}: unknown task {bad['task'].iloc[0]!r}; "
            f"use one of {', '.join(TASKS)}"
        )
    dup = df[df.duplicated(["path", "task"], keep=False)]
    if len(dup):
        raise DataFormatError(
            f"{path} row {dup.index[0] + 2}: {dup['path'].iloc[0]} / "
            f"{dup['task'].iloc[0]} is corrected more than once; keep one row"
        )
    return df


def apply_corrections(data, path: str | Path) -> int:
    """Change `data.targets` in place from a corrections CSV; returns how many labels changed.

    Raises DataFormatError naming the file and row for wrong columns, unknown tasks, paths
    that match no image, unknown label values, or an `old` label that is not the current one
    (the file was made for other data). Applying a file twice changes nothing the second time.

    Example:
        >>> changed = apply_corrections(data, "corrections.csv")  # doctest: +SKIP
    """
    path = Path(path)
    df = read_corrections(path)
    table = data.table
    lookup = {k: i for i, k in enumerate(row_keys(table))}
    ids = table["sample_id"].astype(str)
    unique_ids = ids[~ids.duplicated(keep=False)]
    lookup_id = dict(zip(unique_ids, unique_ids.index))
    rows, unknown = [], []
    for line, key in zip(df.index, df["path"].str.strip()):
        i = lookup.get(key)
        if i is None:
            rel = str((path.parent / key.split("#")[0]).resolve()) + (
                "#" + key.split("#", 1)[1] if "#" in key else ""
            )
            i = lookup.get(rel, lookup_id.get(key))
        if i is None:
            unknown.append((line, key))
        rows.append(i)
    if unknown:
        line, key = unknown[0]
        raise DataFormatError(
            f"{path} row {line + 2}: {key!r} matches no image of the data "
            f"({len(unknown)} unknown path(s) in all); use the paths/keys that `facelab clean` "
            "writes, or a path relative to the corrections file"
        )
    changed = 0
    for line, i, rec in zip(df.index, rows, df.itertuples(index=False)):
        where = f"{path} row {line + 2}"
        if rec.new.strip() == "":
            continue  # not reviewed: keep the label
        task = rec.task
        new = parse_label(task, rec.new, where)
        current = int(data.targets[task][i])
        if new == current:
            continue  # already applied (e.g. by an earlier fold sharing these targets)
        # A blank `old` skips the check (parse_label would reject "" as an age label).
        if rec.old.strip() != "" and parse_label(task, rec.old, where) != current:
            have = CLASS_NAMES[task][current] if current != MISSING else "missing"
            raise DataFormatError(
                f"{where}: {rec.path} has {task} label {have!r}, not old={rec.old!r}; the file "
                "was made for other data or labels (fix `old`, or leave it blank to skip the check)"
            )
        if not data.targets[task].flags.writeable:  # a read-only view of the table
            data.targets[task] = data.targets[task].copy()
        data.targets[task][i] = new
        changed += 1
    return changed
