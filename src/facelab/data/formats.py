"""Dataset formats read into one sample table (a pandas DataFrame, one row per face image).

Columns of the sample table:
    path            absolute path of the image file
    x1, y1, x2, y2  face box in pixels (NaN when the image already is a face crop)
    mask, gender    class index, -1 when unknown (see facelab.data.labels)
    age             age in years (NaN when unknown)
    age_group       age group given directly by the source (-1 when unknown or derived from age)
    person          grouping key: photos of one person (or one scene) share it; splits never
                    cut a group
    race            free text, "" when unknown (used for per-group error reports)
    source          data set name
    sample_id       stable id used in prediction files (competition: the eval ImageID)

Supported formats: the competition layout (`train/train.csv` + per-person folders, and
`eval/info.csv` + `eval/images/`), a generic labels CSV, and a boxes CSV (full images + boxes).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.labels import MISSING, parse_task_value
from facelab.errors import DataFormatError
from facelab.io.image import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

COLUMNS = [
    "path", "x1", "y1", "x2", "y2", "mask", "gender", "age", "age_group", "person", "race",
    "source", "sample_id",
]
# Competition file stems -> mask state (0 correct, 1 incorrect, 2 none).
COMPETITION_STEMS = {
    **{f"mask{i}": 0 for i in range(1, 6)}, "incorrect_mask": 1, "normal": 2,
}


@dataclass
class SourceSpec:
    """Where one data set lives and how to read it.

    Attributes:
        kind: "competition", "competition-eval", "labels" or "boxes".
        path: the CSV file (labels/boxes) or the layout's root folder (competition).
        name: a short name for reports; defaults to the folder name.
        image_root: folder that relative image paths start from (default: the CSV's folder).
        crop: this source's crop mode: "auto" (the config's ``data.crop``), "none",
            "box" or "detect" (the ``data.detector`` cascade, e.g. so close-up photos are
            framed by the same detector as deployment crops while a boxes source keeps its
            boxes). Stored per row in the table's ``crop_mode`` column.
        limit: keep only the first N rows (quick experiments); 0 keeps all.
        render_masks: for a ``labels`` source of unmasked faces: its training and validation
            faces are swapped for a copy with one rendered mask state each, so mask, gender
            and age are learned on the same faces; test faces stay the photos (the split is
            drawn on the photos, so it does not move). Keys: ``wear`` ({state: weight},
            default correct 0.35 / incorrect 0.15 / none 0.5) and ``seed`` (default 0). See
            facelab.data.render_masks. Empty = off.
    """

    kind: str
    path: str
    name: str = ""
    image_root: str = ""
    crop: str = "auto"
    limit: int = 0
    extra: dict = field(default_factory=dict)
    render_masks: dict = field(default_factory=dict)


def _read_csv(path: Path, required: set[str], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataFormatError(f"{path}: {what} not found; check the path")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataFormatError(f"{path}: cannot parse as CSV ({exc}); save it as UTF-8 CSV") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = required - set(df.columns)
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}. "
            f"A {what} needs columns {sorted(required)}"
        )
    return df


def file_digest(path: str | Path) -> str:
    """MD5 of a file's bytes (groups exact duplicates); '' when the file cannot be read."""
    try:
        return hashlib.md5(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def empty_table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [""] * n, "x1": np.nan, "y1": np.nan, "x2": np.nan, "y2": np.nan,
            "mask": MISSING, "gender": MISSING, "age": np.nan, "age_group": MISSING,
            "person": [""] * n, "race": [""] * n, "source": [""] * n, "sample_id": [""] * n,
        },
        index=range(n),
    )


def _parse_age(values: pd.Series, csv: Path) -> np.ndarray:
    ages = pd.to_numeric(values.replace("", np.nan), errors="coerce")
    bad = values[(values != "") & ages.isna()]
    if len(bad):
        raise DataFormatError(
            f"{csv}: age must be a number of years; bad value {bad.iloc[0]!r} "
            f"(row {bad.index[0] + 2})"
        )
    return ages.to_numpy(dtype=float)


def _parse_task(df: pd.DataFrame, task: str, csv: Path) -> np.ndarray:
    if task not in df.columns:
        return np.full(len(df), MISSING, dtype=np.int64)
    return np.array(
        [parse_task_value(task, v, f"{csv} row {i + 2}") for i, v in enumerate(df[task])],
        dtype=np.int64,
    )


def load_competition_train(root: Path, name: str = "") -> pd.DataFrame:
    """Read `root/train/train.csv` + `root/train/images/<path>/{mask1..5,incorrect_mask,normal}.*`.

    Every photo of one person gets that person's id, so splits keep them together.
    """
    root = Path(root)
    csv = root / "train" / "train.csv"
    df = _read_csv(csv, {"id", "gender", "age", "path"}, "competition train.csv")
    images = root / "train" / "images"
    rows = []
    for i, rec in df.iterrows():
        where = f"{csv} row {i + 2}"
        folder = images / rec["path"]
        if not folder.is_dir():
            raise DataFormatError(f"{where}: person folder {folder} not found")
        gender = parse_task_value("gender", rec["gender"], where)
        try:
            age = float(rec["age"])
        except ValueError as exc:
            raise DataFormatError(f"{where}: age {rec['age']!r} is not a number") from exc
        for file in sorted(folder.iterdir()):
            stem = file.stem.lower()
            if file.name.startswith(".") or stem not in COMPETITION_STEMS:
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                log.warning("%s: unexpected extension, skipped", file)
                continue
            rows.append((str(file.resolve()), COMPETITION_STEMS[stem], gender, age,
                         str(rec["id"]), rec.get("race", ""), f"{rec['path']}/{file.name}"))
    table = empty_table(len(rows))
    if rows:
        cols = list(zip(*rows))
        table["path"], table["mask"], table["gender"] = cols[0], cols[1], cols[2]
        table["age"], table["person"], table["race"], table["sample_id"] = (
            cols[3], cols[4], cols[5], cols[6])
    table["source"] = name or root.name
    return table


def load_competition_eval(root: Path, name: str = "") -> pd.DataFrame:
    """Read `root/eval/info.csv` (ImageID, ans) + `root/eval/images/` for prediction."""
    root = Path(root)
    csv = root / "eval" / "info.csv"
    df = _read_csv(csv, {"ImageID"}, "competition eval info.csv")
    table = empty_table(len(df))
    table["path"] = [str((root / "eval" / "images" / f).resolve()) for f in df["ImageID"]]
    table["sample_id"] = df["ImageID"].to_numpy()
    table["person"] = df["ImageID"].to_numpy()
    table["source"] = name or root.name
    return table


def _resolve(image_root: Path, rel: str) -> str:
    p = Path(rel)
    return str((p if p.is_absolute() else image_root / p).resolve())


def load_labels_csv(csv: Path, name: str = "", image_root: str = "",
                    require_labels: bool = True) -> pd.DataFrame:
    """Read a labels CSV: an `image` (or `path`) column plus any of mask, gender, age,
    age_group, person, race. Blank cells mean "unknown" (a missing label adds no loss).
    For prediction (`require_labels=False`) the label columns may all be absent."""
    csv = Path(csv)
    return labels_from_frame(_read_csv(csv, set(), "labels CSV"), csv, name, image_root,
                             require_labels)


def labels_from_frame(df: pd.DataFrame, csv: Path, name: str = "", image_root: str = "",
                      require_labels: bool = True) -> pd.DataFrame:
    """Build the sample table from an already-read labels frame; `csv` is named in errors."""
    img_col = "image" if "image" in df.columns else "path" if "path" in df.columns else None
    if img_col is None:
        raise DataFormatError(
            f"{csv}: missing column 'image' (or 'path'); found {list(df.columns)}. "
            "A labels CSV needs an image column plus any of mask, gender, age, age_group"
        )
    tasks = {"mask", "gender", "age", "age_group"} & set(df.columns)
    if not tasks and require_labels:
        raise DataFormatError(
            f"{csv}: no label column; add at least one of mask, gender, age, age_group"
        )
    root = Path(image_root) if image_root else csv.parent
    table = empty_table(len(df))
    table["path"] = [_resolve(root, p) for p in df[img_col]]
    table["mask"] = _parse_task(df, "mask", csv)
    table["gender"] = _parse_task(df, "gender", csv)
    if "age" in df.columns:
        table["age"] = _parse_age(df["age"], csv)
    if "age_group" in df.columns:
        groups = pd.to_numeric(df["age_group"].replace("", "-1"), errors="coerce")
        if groups.isna().any() or not groups.isin([-1, 0, 1, 2]).all():
            raise DataFormatError(f"{csv}: age_group must be 0, 1, 2 or blank")
        table["age_group"] = groups.astype(np.int64).to_numpy()
    for col in ("x1", "y1", "x2", "y2"):
        if col in df.columns:
            table[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
    table["race"] = df["race"].to_numpy() if "race" in df.columns else ""
    table["sample_id"] = df[img_col].to_numpy()
    table["person"] = df["person"].to_numpy() if "person" in df.columns else ""
    table["source"] = name or csv.parent.name
    return table


def load_boxes_csv(csv: Path, name: str = "", image_root: str = "",
                   require_labels: bool = True) -> pd.DataFrame:
    """Read a boxes CSV (`image,x1,y1,x2,y2,label`): one row per face in a full image.

    `label` is the mask state (with_mask / without_mask / mask_weared_incorrect or
    correct / incorrect / none); gender/age columns are read when present. Faces of one
    image share a group so a split never separates them.
    """
    csv = Path(csv)
    df = _read_csv(csv, {"image", "x1", "y1", "x2", "y2"}, "boxes CSV")
    if "label" in df.columns and "mask" not in df.columns:
        df = df.rename(columns={"label": "mask"})
    table = labels_from_frame(df, csv, name, image_root, require_labels)
    coords = table[["x1", "y1", "x2", "y2"]].to_numpy(float)
    bad = np.isnan(coords).any(1) | (coords[:, 2] <= coords[:, 0]) | (coords[:, 3] <= coords[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            f"{csv} row {i + 2}: box {coords[i].tolist()} is empty or not numeric; "
            "boxes are x1,y1,x2,y2 pixels with x2 > x1 and y2 > y1"
        )
    table["sample_id"] = [
        f"{p}#{int(a)},{int(b)},{int(c)},{int(d)}" for p, (a, b, c, d) in zip(df["image"], coords)
    ]
    return table



SOURCE_CROP_MODES = ("auto", "none", "box", "detect")  # facelab.data.cache.CROP_MODES


def load_source(spec: SourceSpec) -> pd.DataFrame:
    """Read one data set into the sample table and fill in person groups.

    Rows without a person id get the MD5 of their image file, so exact-duplicate images
    (and all faces cut from one image) always fall on the same side of a split.

    Example:
        >>> load_source(SourceSpec("labels", "utkface/labels.csv"))  # doctest: +SKIP
    """
    path = Path(spec.path).expanduser()
    if spec.kind == "competition":
        table = load_competition_train(path, spec.name)
    elif spec.kind == "competition-eval":
        table = load_competition_eval(path, spec.name)
    elif spec.kind == "labels":
        table = load_labels_csv(path, spec.name, spec.image_root)
    elif spec.kind == "boxes":
        table = load_boxes_csv(path, spec.name, spec.image_root)
    else:
        raise DataFormatError(
            f"unknown data source kind {spec.kind!r} for {path}; "
            "use competition, competition-eval, labels or boxes"
        )
    if spec.crop not in SOURCE_CROP_MODES:
        raise DataFormatError(f"data source {spec.name or path}: crop {spec.crop!r} unknown; "
                              f"use one of {SOURCE_CROP_MODES}")
    if spec.limit:
        table = table.iloc[: spec.limit].reset_index(drop=True)
    no_person = table["person"].astype(str) == ""
    if no_person.any():
        digests = {p: file_digest(p) for p in table.loc[no_person, "path"].unique()}
        table.loc[no_person, "person"] = [
            "md5:" + (digests[p] or p) for p in table.loc[no_person, "path"]
        ]
    table["person"] = table["source"].astype(str) + "/" + table["person"].astype(str)
    table = table[COLUMNS]
    if spec.crop != "auto":  # only then: tables (and cache keys) of auto sources stay as they were
        table = table.assign(crop_mode=spec.crop)
    return table


def load_sources(specs: list[SourceSpec]) -> pd.DataFrame:
    """Concatenate several data sets (e.g. a mask-only set and an age/gender set)."""
    if not specs:
        raise DataFormatError("no data sources given; add at least one to the config's data.sources")
    frames = [load_source(s) for s in specs]
    return pd.concat(frames, ignore_index=True)
