"""Batch cropping of a folder, a labels CSV or the competition layout into a crops cache.

Output folder layout::

    out/settings.json   cropper settings + cache key (a rerun with other settings refuses)
    out/crops/...       one image per input: its relative path and extension + ".jpg"
                        (``a/face.png`` -> ``crops/a/face.png.jpg``; the k-th extra face
                        with choose="all" -> ``a/face.png#k.jpg``); names come from
                        :func:`facelab.io.outpaths.derived_path`, so ``..``/absolute inputs
                        and symlinks never write outside ``out/crops``
    out/crops.csv       source, crop, stage, score, box, 5 landmarks, crop size
    out/errors.csv      inputs that could not be read, cropped or written, with the reason

One bad input never stops the job: it is listed in errors.csv and the rest are cropped.
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
from facelab.errors import (
    CheckpointError,
    ConfigError,
    DataFormatError,
    FacelabError,
    WeightsError,
)
from facelab.io.outpaths import derived_path

log = logging.getLogger(__name__)

COLUMNS = (
    ["source", "crop", "stage", "score", "x1", "y1", "x2", "y2"]
    + [f"lm{i}_{a}" for i in range(5) for a in "xy"]
    + ["crop_w", "crop_h"]
)
_PATH_COLUMNS = ("path", "image", "file", "filename", "ImageID", "img_path")
# Errors that concern the whole job (settings, weights), not one input: never skipped.
_JOB_ERRORS = (ConfigError, WeightsError, CheckpointError, MemoryError)


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
        out = [(p.relative_to(source).as_posix(), p) for p in _images_under(source)]
        if not out:
            raise DataFormatError(f"{source}: no image files in this folder; check the path")
        return out
    if not source.is_file():
        raise DataFormatError(f"{source} not found; pass an image folder or a CSV of paths")
    df = read_path_csv(source)
    col = next((c for c in _PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise DataFormatError(
            f"{source}: no path column; expected one of {', '.join(_PATH_COLUMNS)}"
        )
    entries = [e for e in dict.fromkeys(df[col]) if e.strip()]
    if not entries:
        raise DataFormatError(f"{source}: no rows with a path in column {col!r}; add image paths")
    base, out = source.parent, []
    for entry in entries:
        for root in (base, base / "images"):
            p = root / entry
            if p.is_dir():
                out += [(_name(q, base), q) for q in _images_under(p)]
                break
            if p.is_file():
                out.append((_name(p, base), p))
                break
        else:
            out.append((entry, base / entry))  # reported as an error when read
    return out


def _name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (lexically, so ``../x.jpg`` stays), or as given when
    absolute; outputs are named from it by :func:`derived_path`, which keeps them inside."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def read_path_csv(source: Path) -> pd.DataFrame:
    """Read a CSV as text columns, turning unreadable files into one-line DataFormatErrors."""
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataFormatError(
            f"{source}: empty CSV; write a header with a path column "
            f"({', '.join(_PATH_COLUMNS)}) and one image path per row"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}, e.g. a latin-1 export); save it as UTF-8 and retry"
        ) from None
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(
            f"{source}: not a readable CSV ({reason}); check its format"
        ) from None


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
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    ok = [(out / "crops" / c).is_file() for c in df["crop"]]
    return set(df.loc[ok, "source"])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FacelabError) else f"{type(exc).__name__}: {text}"


def _rows(name: str, res: CropResult, out: Path, fmt: str) -> list[list]:
    """Write the crops of one input and return their crops.csv rows (raises if one fails)."""
    import cv2

    faces = res.faces or [None]
    crops_dir = out / "crops"
    rows = []
    for k, (crop, face) in enumerate(zip(res.crops or [res.crop], faces)):
        dest = derived_path(crops_dir, name, suffix=f".{fmt}", variant=k or None)
        rel = dest.relative_to(crops_dir).as_posix()
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else []
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            ok = not crop.size or cv2.imwrite(
                str(dest), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params
            )
        except (OSError, cv2.error) as exc:
            raise FacelabError(
                f"could not write {dest} ({_one_line(exc)}); check the output folder"
            ) from None
        if not ok:
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


def _crop_batch(cropper: FaceCropper, images: list[np.ndarray]) -> list[CropResult | Exception]:
    """``cropper.batch``; if the batch fails, each image alone, so one bad image fails alone
    (its entry is the exception)."""
    if len(images) > 1:
        try:
            return list(cropper.batch(images))
        except _JOB_ERRORS:
            raise
        except Exception:  # noqa: BLE001  (retried one by one below to find the bad image)
            log.info("a crop batch failed; retrying its %d images one by one", len(images))
    results: list[CropResult | Exception] = []
    for image in images:
        try:
            results.append(cropper.batch([image])[0])
        except _JOB_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001  (skip and list the bad input)
            results.append(exc)
    return results


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
    items = gather_inputs(source)  # bad sources fail before the output folder is touched
    _check_settings(out, cropper, overwrite)
    done = _done_sources(out)
    todo = [(n, p) for n, p in items if n not in done]
    summary = CropSummary(skipped=len(items) - len(todo))
    new_file = not (out / "crops.csv").is_file() or (out / "crops.csv").stat().st_size == 0
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
                except _JOB_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001  (skip and list the bad input)
                    summary.errors.append((name, _one_line(exc)))
            for name, res in zip(names, _crop_batch(cropper, images) if images else []):
                if isinstance(res, Exception):
                    summary.errors.append((name, _one_line(res)))
                    continue
                try:
                    rows = _rows(name, res, out, image_format)
                except FacelabError as exc:  # not writable or outside out/crops: skip, list
                    summary.errors.append((name, _one_line(exc)))
                    continue
                writer.writerows(rows)
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
