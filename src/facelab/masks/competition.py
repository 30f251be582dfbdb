"""Build the 18-class competition layout from a labelled face set, with rendered masks.

For each face of a labels CSV (``image,age,gender[,race]``, e.g. UTKFace's) one "person" is
written: ``mask1..mask5`` are five different correct-mask renders (different kinds, colours
and prints), ``incorrect_mask`` one incorrect render (below the nose, mouth uncovered or on
the chin), ``normal`` the photo itself (its original bytes). People are split by a seeded
hash of their id: train people go to ``train/images/{id}_{gender}_{race}_{age}/`` +
``train/train.csv``; eval people's seven photos go to ``eval/images/`` under opaque names,
listed in ``eval/info.csv`` (``ImageID,ans`` with ``ans`` = 0, as the competition hands it
out) and, with their true class ids, in ``eval/answers.csv``.

The build is resumable: a person whose files are all there is skipped. Images that cannot
be decoded, or where no face landmarks are found, are skipped and listed in ``skipped.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facelab.errors import DataFormatError, FacelabError
from facelab.io.image import load_image
from facelab.masks.landmarks import detect_landmarks68
from facelab.masks.render import RenderSpec, render_spec
from facelab.masks.shapes import MASK_KINDS

log = logging.getLogger(__name__)

STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
_GENDERS = {"male": 0, "m": 0, "0": 0, "man": 0, "female": 1, "f": 1, "1": 1, "woman": 1}


@dataclass
class Person:
    """One labelled face of the input set."""

    pid: str
    image: Path
    age: int
    gender: int
    race: str

    @property
    def folder(self) -> str:
        race = self.race.replace("/", "-").replace(" ", "-") or "unknown"
        return f"{self.pid}_{('male', 'female')[self.gender]}_{race}_{self.age}"


@dataclass
class BuildReport:
    """What a build did: counts, and the images it could not use (path, reason)."""

    out: Path
    train_people: int = 0
    eval_people: int = 0
    written: int = 0
    already_there: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_people(labels_csv: Path, image_root: Path | None = None, limit: int = 0,
                command: str = "make-competition") -> list[Person]:
    """People (one per row) of a labels CSV with columns image, age, gender (race optional);
    ``command`` names the caller in errors."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise DataFormatError(f"{labels_csv}: labels CSV not found; check the path")
    root = Path(image_root) if image_root else labels_csv.parent
    with labels_csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip() for c in reader.fieldnames or []}
        missing = {"image", "age", "gender"} - cols
        if missing:
            raise DataFormatError(
                f"{labels_csv}: missing column(s) {sorted(missing)}; found {sorted(cols)}. "
                f"{command} needs image, age, gender (race optional)"
            )
        people = []
        for i, row in enumerate(reader):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            where = f"{labels_csv} row {i + 2}"
            g = _GENDERS.get(row["gender"].lower())
            if g is None:
                raise DataFormatError(f"{where}: gender {row['gender']!r} is not male/female")
            try:
                age = int(float(row["age"]))
            except ValueError as exc:
                raise DataFormatError(f"{where}: age {row['age']!r} is not a number") from exc
            img = Path(row["image"])
            people.append(Person(f"{i:06d}", img if img.is_absolute() else root / img, age, g,
                                 row.get("race", "")))
            if limit and len(people) >= limit:
                break
    return people


def class_id(mask: int, gender: int, age: int) -> int:
    """The competition's 18-class id: mask * 6 + gender * 3 + age group (<30, 30-59, >=60)."""
    return mask * 6 + gender * 3 + (0 if age < 30 else 1 if age < 60 else 2)


def _unit(*parts: object) -> float:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_eval(person: Person, seed: int, eval_fraction: float) -> bool:
    """Whether a person goes to the eval split (a seeded hash of the id: stable under --limit)."""
    return _unit("split", seed, person.pid) < eval_fraction


def person_specs(person: Person, seed: int) -> list[RenderSpec]:
    """The seven render specs of a person (``normal`` is wear "none", i.e. the photo)."""
    rng = np.random.default_rng([seed, int(person.pid)])
    kinds = [MASK_KINDS[k] for k in rng.permutation(len(MASK_KINDS))]
    kinds.append(MASK_KINDS[rng.integers(len(MASK_KINDS))])
    seeds = rng.integers(0, 2**31, 6)
    specs = [RenderSpec(k, "correct", (), int(s)) for k, s in zip(kinds, seeds[:5])]
    specs.append(RenderSpec(MASK_KINDS[rng.integers(len(MASK_KINDS))], "incorrect", (),
                            int(seeds[5])))
    specs.append(RenderSpec("surgical", "none", (), 0))
    return specs


def _eval_name(seed: int, person: Person, stem: str, ext: str) -> str:
    return hashlib.sha1(f"{seed}/{person.pid}/{stem}".encode()).hexdigest()[:24] + ext


def _names(person: Person, seed: int, evaluated: bool) -> list[str]:
    normal_ext = person.image.suffix.lower() if person.image.suffix else ".jpg"
    exts = [".jpg"] * 6 + [normal_ext]
    if evaluated:
        return [_eval_name(seed, person, s, e) for s, e in zip(STEMS, exts)]
    return [s + e for s, e in zip(STEMS, exts)]


def _write_person(person: Person, names: list[str], folder: Path, seed: int,
                  landmarks: Callable[[np.ndarray], np.ndarray]) -> None:
    image = load_image(person.image)
    pts = landmarks(image)
    folder.mkdir(parents=True, exist_ok=True)
    for spec, name in zip(person_specs(person, seed), names):
        target = folder / name
        tmp = target.with_name(f".{name}.tmp")
        if spec.wear == "none":
            shutil.copyfile(person.image, tmp)
        else:
            Image.fromarray(render_spec(image, pts, spec)).save(tmp, format="JPEG", quality=93)
        os.replace(tmp, target)


def build_competition(labels_csv: str | Path, out: str | Path, *, limit: int = 0, seed: int = 0,
                      eval_fraction: float = 0.2, image_root: str | Path | None = None,
                      landmarks: Callable[[np.ndarray], np.ndarray] | None = None,
                      progress: bool = False) -> BuildReport:
    """Write (or complete) the competition layout under ``out``; see the module docstring.

    Args:
        labels_csv: CSV with image, age, gender (and race) columns.
        out: the layout's root folder (``train/`` and ``eval/`` go under it).
        limit: use only the first N people (0: all).
        seed: render and split seed; a rerun with the same seed resumes the same build.
        eval_fraction: share of people put in the eval split.
        image_root: folder the CSV's image paths start from (default: the CSV's folder).
        landmarks: function image -> 68 (or 5) landmarks; default dlib's 68-point predictor.
        progress: show a progress bar.

    Example:
        >>> build_competition("utkface/labels.csv", "comp", limit=50)  # doctest: +SKIP
    """
    if not 0 <= eval_fraction < 1:
        raise DataFormatError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    out = Path(out)
    people = read_people(Path(labels_csv), Path(image_root) if image_root else None, limit)
    landmarks = landmarks or detect_landmarks68
    train_dir, eval_dir = out / "train" / "images", out / "eval" / "images"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(out)
    done_train: list[Person] = []
    done_eval: list[tuple[Person, list[str]]] = []
    bar = people
    if progress:
        from rich.progress import track  # a declared dependency (tqdm is not)

        bar = track(people, description="make-competition")
    try:
        for person in bar:
            evaluated = is_eval(person, seed, eval_fraction)
            names = _names(person, seed, evaluated)
            folder = eval_dir if evaluated else train_dir / person.folder
            if all((folder / n).is_file() for n in names):
                report.already_there += 1
            else:
                try:
                    _write_person(person, names, folder, seed, landmarks)
                except FacelabError as exc:
                    report.skipped.append((str(person.image), str(exc)))
                    log.warning("skipped %s: %s", person.image, exc)
                    if not evaluated and folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
                    continue
                report.written += 1
            if evaluated:
                done_eval.append((person, names))
            else:
                done_train.append(person)
    finally:
        _write_tables(out, done_train, done_eval, report.skipped)
    report.train_people, report.eval_people = len(done_train), len(done_eval)
    return report


def _write_tables(out: Path, train: list[Person], evals: list[tuple[Person, list[str]]],
                  skipped: list[tuple[str, str]]) -> None:
    with (out / "train" / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "gender", "race", "age", "path"])
        for p in train:
            w.writerow([p.pid, ("male", "female")[p.gender], p.race, p.age, p.folder])
    info = [["ImageID", "ans"]]
    answers = [["ImageID", "ans", "person", "mask", "gender", "age"]]
    for p, names in evals:
        for stem, name in zip(STEMS, names):
            mask = 0 if stem.startswith("mask") else 1 if stem.startswith("incorrect") else 2
            info.append([name, 0])
            answers.append([name, class_id(mask, p.gender, p.age), p.pid, mask, p.gender, p.age])
    for name, rows in (("info.csv", info), ("answers.csv", answers)):
        with (out / "eval" / name).open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    with (out / "skipped.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "reason"])
        w.writerows(skipped)
