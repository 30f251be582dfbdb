"""A labelled face set with one rendered mask state per face: mask, gender and age on the
same faces.

No real data here has all three labels on one face. This writes, for every row of a labels
CSV (``image,age,gender[,race]``, e.g. UTKFace's), one image whose mask state is drawn from
``wear_weights`` with a seeded sampler: a rendered mask worn correctly, a rendered mask worn
incorrectly, or the photo itself ("none"). The output folder holds ``images/`` and a
``labels.csv`` (``image,source_image,age,gender,race,mask,person,kind,wear``) that ``facelab train`` reads
as a ``labels`` source, so a model learns mask state on close-up faces of the same framing
and population as its gender and age faces.

Faces where no landmarks are found keep their photo and the label "none" (true: nothing was
rendered) and are counted in ``unrendered``; images that cannot be decoded are skipped and
listed in ``skipped.csv``. The build resumes: an image already written is not rendered again;
``settings.json`` records the seed and wear weights, and a build into a folder made with
other settings is refused (its images would carry labels of the new settings).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facelab.errors import ConfigError, FacelabError
from facelab.io.image import load_image
from facelab.masks.competition import read_people
from facelab.masks.landmarks import LandmarksError, detect_landmarks68
from facelab.masks.render import MaskRenderer

MASK_NAMES = ("correct", "incorrect", "none")
DEFAULT_WEARS = {"correct": 0.35, "incorrect": 0.15, "none": 0.5}


@dataclass
class MaskedSetReport:
    """What a build did."""

    out: Path
    rows: int = 0
    written: int = 0
    already_there: int = 0
    unrendered: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def build_masked_set(labels_csv: str | Path, out: str | Path, *,
                     wear_weights: dict[str, float] | None = None, seed: int = 0,
                     limit: int = 0, image_root: str | Path | None = None,
                     landmarks: Callable[[np.ndarray], np.ndarray] | None = None,
                     progress: bool = False) -> MaskedSetReport:
    """Write (or complete) a masked copy of a labelled face set under ``out``.

    Args:
        labels_csv: CSV with image, age, gender (race optional) columns.
        out: output folder (``images/``, ``labels.csv``, ``skipped.csv``).
        wear_weights: relative weights of correct / incorrect / none (default 0.35 / 0.15 / 0.5).
        seed: sampler seed; the i-th face's render is a pure function of (seed, i).
        limit: first N faces only (0: all).
        image_root: folder the CSV's image paths start from (default: the CSV's folder).
        landmarks: image -> 68 (or 5) landmarks; default dlib's 68-point predictor.
        progress: show a progress bar.

    Example:
        >>> build_masked_set("utkface/labels.csv", "utk-masked", seed=0)  # doctest: +SKIP
    """
    out = Path(out)
    images = out / "images"
    sampler = MaskRenderer(wear_weights=dict(wear_weights or DEFAULT_WEARS), seed=seed)
    _check_settings(out, {"seed": seed, "wear_weights": dict(sampler.wear_weights)})
    images.mkdir(parents=True, exist_ok=True)
    landmarks = landmarks or detect_landmarks68
    people = read_people(Path(labels_csv), Path(image_root) if image_root else None, limit,
                         command="make-masked / render_masks")
    report = MaskedSetReport(out)
    rows: list[list] = []
    bar = people
    if progress:
        from rich.progress import track

        bar = track(people, description="masked set")
    try:
        for person in bar:
            spec = sampler.spec(int(person.pid))
            name = f"{person.pid}.jpg"
            target = images / name
            marker = images / f"{person.pid}.none"  # written when no face was found
            wear, kind = spec.wear, spec.kind
            if marker.exists():
                wear = "none"
                report.already_there += 1
            elif target.is_file():
                report.already_there += 1
            else:
                try:
                    image = load_image(person.image)
                except FacelabError as exc:
                    report.skipped.append((str(person.image), str(exc)))
                    continue
                tmp = target.with_name(f".{name}.tmp")
                if wear == "none":
                    _save_photo(person.image, image, tmp)
                else:
                    try:
                        pts = landmarks(image)
                    except LandmarksError:
                        pts = None
                    if pts is None:
                        _save_photo(person.image, image, tmp)
                        marker.touch()
                        wear = "none"
                    else:
                        Image.fromarray(sampler(image, pts, index=int(person.pid))[0]).save(
                            tmp, format="JPEG", quality=93)
                os.replace(tmp, target)
                report.written += 1
            if marker.exists():
                report.unrendered += 1
            mask = spec.mask_label if wear != "none" else 2
            report.counts[MASK_NAMES[mask]] = report.counts.get(MASK_NAMES[mask], 0) + 1
            rows.append([f"images/{name}", str(Path(person.image).resolve()), person.age, ("male", "female")[person.gender],
                         person.race, MASK_NAMES[mask], f"p{person.pid}",
                         kind if wear != "none" else "", spec.resolved_wear if wear != "none" else "none"])
    finally:
        _write(out, rows, report.skipped)
    report.rows = len(rows)
    return report


def _check_settings(out: Path, settings: dict) -> None:
    """Record the build settings in ``out/settings.json``; refuse a folder built with others."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(settings)):
            raise ConfigError(
                f"{out} was built with {old}, not {settings}: its images carry those renders; "
                "pass another --out or delete the folder"
            )
        return
    if (out / "images").is_dir() and any((out / "images").iterdir()):
        raise ConfigError(f"{out}/images holds files but no settings.json; pass an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def _save_photo(source: str | Path, image: np.ndarray, tmp: Path) -> None:
    """An unmasked face keeps its photo: a JPEG source is copied byte for byte (the same
    pixels as the test rows, which read the original), anything else is encoded once."""
    if Path(source).suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(source, tmp)
    else:
        Image.fromarray(image).save(tmp, format="JPEG", quality=95)


def _write(out: Path, rows: list[list], skipped: list[tuple[str, str]]) -> None:
    tmp = out / ".labels.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "source_image", "age", "gender", "race", "mask", "person", "kind", "wear"])
        w.writerows(rows)
    os.replace(tmp, out / "labels.csv")
    with (out / "skipped.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "reason"])
        w.writerows(skipped)
