"""Batch cropping of a folder, a labels CSV or the competition layout into a crops cache.

Output folder layout::

    out/settings.json   cropper settings + cache key (a rerun with other settings refuses)
    out/crops/...       one image per input (several with choose="all"), same relative path
    out/crops.csv       source, crop, stage, score, box, 5 landmarks, crop size
    out/errors.csv      files that could not be read, with the reason

Reruns skip sources already in crops.csv whose crop files exist (resumable).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.detect.cascade import CropResult, FaceCropper
from facelab.errors import ConfigError, DataFormatError, FacelabError

log = logging.getLogger(__name__)

COLUMNS = (
    ["source", "crop", "stage", "score", "x1", "y1", "x2", "y2"]
    + [f"lm{i}_{a}" for i in range(5) for a in "xy"]
    + ["crop_w", "crop_h"]
)
_PATH_COLUMNS = ("path", "image", "file", "filename", "ImageID", "img_path")


def _images_under(folder: Path) -> list[Path]:
    from facelab.io import is_image_file

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def gather_inputs(source: str | Path) -> list[tuple[str, Path]]:
    """(relative name, file) pairs to crop from a folder or a CSV.

    A folder is searched recursively (this covers the competition layout: ``train/images/
    <person>/mask1.jpg`` ... and ``eval/images/*``). A CSV needs a path-like column
    (path, image, file, filename, ImageID); entries are resolved against the CSV's folder
    and its ``images/`` sub-folder, and an entry naming a folder (the competition's
    train.csv) expands to the images inside.

    Example:
        >>> gather_inputs("data/train/train.csv")[:1]  # doctest: +SKIP
        [('images/000001_female_Asian_45/incorrect_mask.jpg', PosixPath(...))]
    """
    source = Path(source)
    if source.is_dir():
        return [(p.relative_to(source).as_posix(), p) for p in _images_under(source)]
    if not source.is_file():
        raise DataFormatError(f"{source} not found; pass an image folder or a CSV of paths")
    df = pd.read_csv(source)
    col = next((c for c in _PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise DataFormatError(
            f"{source}: no path column; expected one of {', '.join(_PATH_COLUMNS)}"
        )
    base, out = source.parent, []
    for entry in dict.fromkeys(str(v) for v in df[col]):
        for root in (base, base / "images"):
            p = root / entry
            if p.is_dir():
                out += [(q.relative_to(base).as_posix(), q) for q in _images_under(p)]
                break
            if p.is_file():
                out.append((p.relative_to(base).as_posix(), p))
                break
        else:
            out.append((entry, base / entry))  # reported as an error when read
    return out


@dataclass
class CropSummary:
    """Counts of one ``run_crop_job`` call."""

    done: int = 0
    skipped: int = 0
    stages: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


def _check_settings(out: Path, cropper: FaceCropper, overwrite: bool) -> None:
    path = out / "settings.json"
    settings = {"cache_key": cropper.cache_key(), "spec": cropper.spec, **cropper.settings()}
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        if old.get("cache_key") != settings["cache_key"]:
            raise ConfigError(
                f"{out} holds crops made with other settings (key {old.get('cache_key')}, now "
                f"{settings['cache_key']}); use another --out or pass --overwrite"
            )
    if overwrite:
        for name in ("crops.csv", "errors.csv"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, default=str))


def _done_sources(out: Path) -> set[str]:
    path = out / "crops.csv"
    if not path.is_file():
        return set()
    df = pd.read_csv(path)
    ok = [(out / "crops" / c).is_file() for c in df["crop"]]
    return set(df.loc[ok, "source"])


def _rows(name: str, res: CropResult, out: Path, fmt: str) -> list[list]:
    import cv2

    stem = str(Path(name).with_suffix(""))
    faces = res.faces or [None]
    rows = []
    for k, (crop, face) in enumerate(zip(res.crops or [res.crop], faces)):
        rel = f"{stem}{'' if k == 0 else f'_{k}'}.{fmt}"
        dest = out / "crops" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else []
        if crop.size and not cv2.imwrite(str(dest), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params):
            raise FacelabError(f"could not write {dest}; check the output folder")
        box = face.box if face else (np.nan,) * 4
        lm = (
            face.landmarks.ravel().tolist()
            if face is not None and face.landmarks is not None
            else [np.nan] * 10
        )
        score = face.score if face else np.nan
        stage = face.stage if face else res.stage
        rows.append([name, rel, stage, score, *box, *lm, crop.shape[1], crop.shape[0]])
    return rows


def run_crop_job(
    source: str | Path,
    out: str | Path,
    cropper: FaceCropper,
    *,
    image_format: str = "jpg",
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> CropSummary:
    """Crop every image of ``source`` into ``out`` (see the module doc); resumable.

    Example:
        >>> run_crop_job("data/train/images", "cache/crops", FaceCropper("mtcnn>center"))  # doctest: +SKIP
    """
    from facelab.detect.evaluate import _progress
    from facelab.io import load_image

    if image_format not in ("jpg", "png"):
        raise ConfigError(f"image format must be jpg or png, got {image_format!r}")
    out = Path(out)
    _check_settings(out, cropper, overwrite)
    items = gather_inputs(source)
    done = _done_sources(out)
    todo = [(n, p) for n, p in items if n not in done]
    summary = CropSummary(skipped=len(items) - len(todo))
    new_file = not (out / "crops.csv").is_file()
    with open(out / "crops.csv", "a", newline="") as fh, _progress(progress, "crop") as bar:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)
        task = bar.add_task("cropping", total=len(todo)) if bar else None
        for start in range(0, len(todo), batch_size):
            names, images = [], []
            for name, path in todo[start : start + batch_size]:
                try:
                    images.append(load_image(path))
                    names.append(name)
                except FacelabError as exc:
                    summary.errors.append((name, str(exc)))
            for name, res in zip(names, cropper.batch(images) if images else []):
                writer.writerows(_rows(name, res, out, image_format))
                summary.done += 1
                summary.stages[res.stage] = summary.stages.get(res.stage, 0) + 1
            fh.flush()
            if bar:
                bar.advance(task, len(todo[start : start + batch_size]))
    with open(out / "errors.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "error"])
        writer.writerows(summary.errors)
    return summary
