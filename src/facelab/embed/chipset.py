"""Face-chip sets: dlib-aligned 150x150 chips of clean photos, with 68 landmarks on each chip.

Distillation (``facelab.embed.distill``) needs, per clean face, the chip the deployed
embedder would see (dlib's 5-point chip on the detector's box, as ``DlibResNetEmbedder``
makes it) and landmarks *in chip coordinates*, so masks and accessories can be rendered on
the chip itself during training. A set is one ``.npz`` (no pickles): the chips as JPEG
bytes (concatenated, with offsets), ``landmarks`` (N, 68, 2) float32, and per-chip
``source``, ``identity`` and ``image`` strings. Building it detects every photo once; the
file travels to a GPU machine easily (about 5 KB per face).

Example:
    >>> build_chipset([("../shared/data/lfw-train/identities.csv", "lfw-train")],
    ...               "runs/chips/lfw-train.npz")          # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.errors import DataFormatError
from facelab.io.atomic import atomic_path

log = logging.getLogger(__name__)
CHIP = 150
PADDING = 0.25


@dataclass
class ChipSet:
    """Chips in memory: ``chips`` (N, 150, 150, 3) uint8 RGB, ``landmarks`` (N, 68, 2)."""

    chips: np.ndarray
    landmarks: np.ndarray
    source: np.ndarray
    identity: np.ndarray
    image: np.ndarray

    def __len__(self) -> int:
        return len(self.chips)

    def subset(self, keep: np.ndarray) -> ChipSet:
        return ChipSet(self.chips[keep], self.landmarks[keep], self.source[keep],
                       self.identity[keep], self.image[keep])


def _encode(chip: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(chip).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def save_chipset(cs: ChipSet, path: str | Path, quality: int = 90) -> Path:
    """Write a chip set as one pickle-free ``.npz`` (JPEG chips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blobs = [_encode(c, quality) for c in cs.chips]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    with atomic_path(path, ".npz") as tmp:  # np.savez keeps a name ending in .npz
        np.savez(tmp, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                 landmarks=cs.landmarks.astype(np.float32), source=cs.source.astype(str),
                 identity=cs.identity.astype(str), image=cs.image.astype(str))
    return path


def load_chipset(*paths: str | Path) -> ChipSet:
    """Read and concatenate chip sets written by :func:`save_chipset` / :func:`build_chipset`.

    Raises:
        DataFormatError: a file is missing or is not a chip set.
    """
    from PIL import Image

    parts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DataFormatError(f"chip set {p} not found; build it with `facelab embed-train "
                                  "chips SOURCE... --out FILE.npz`")
        try:
            z = np.load(p, allow_pickle=False)
            jpeg, off = z["jpeg"], z["offsets"]
            chips = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes()))
                                         .convert("RGB")) for i in range(len(off) - 1)])
            parts.append(ChipSet(chips, z["landmarks"], z["source"], z["identity"], z["image"]))
        except (KeyError, ValueError, OSError) as exc:
            raise DataFormatError(f"{p}: not a facelab chip set ({exc})") from exc
    if not parts:
        raise DataFormatError("no chip set given")
    return ChipSet(*(np.concatenate([getattr(c, f) for c in parts])
                     for f in ("chips", "landmarks", "source", "identity", "image")))


def list_images(source: str | Path) -> pd.DataFrame:
    """(image path, identity) rows of a CSV with an ``image`` column (paths relative to the
    CSV; ``identity`` optional) or of a folder (identity = sub-folder name)."""
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return pd.DataFrame({"image": [str(p) for p in files],
                             "identity": [p.parent.name for p in files]})
    if src.suffix.lower() != ".csv" or not src.is_file():
        raise DataFormatError(f"{src}: give a folder of images or a CSV with an image column")
    df = pd.read_csv(src)
    if "image" not in df.columns:
        raise DataFormatError(f"{src} has no 'image' column (columns: {list(df.columns)})")
    ident = df["identity"].astype(str) if "identity" in df.columns else [""] * len(df)
    return pd.DataFrame({"image": [str(src.parent / p) for p in df["image"]], "identity": ident})


class ChipMaker:
    """dlib HOG (central face) -> dlib 5-point chip -> 68 landmarks found on the chip."""

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        from facelab.embed.weights import dlib_model_path

        self.dlib = dlib
        self.det = dlib.get_frontal_face_detector()
        self.sp5 = dlib.shape_predictor(str(dlib_model_path("shape5")))
        self.sp68 = dlib.shape_predictor(str(dlib_model_path("shape68")))
        self.upsample = upsample
        # where dlib's HOG box falls on its own chips (fallback when HOG misses on the chip)
        self.chip_rect = dlib.rectangle(25, 25, 125, 125)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        rects = list(self.det(img, self.upsample))
        if not rects:
            return None
        h, w = img.shape[:2]

        def rank(r):  # central and large: LFW-style photos can hold bystanders
            cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
            d = np.hypot(cx - w / 2, cy - h / 2) / max(h, w)
            return r.width() * r.height() * (1 - d)

        rect = max(rects, key=rank)
        chip = np.asarray(self.dlib.get_face_chip(img, self.sp5(img, rect), size=CHIP,
                                                  padding=PADDING))
        return chip, self.landmarks_on_chip(chip)

    def landmarks_on_chip(self, chip: np.ndarray) -> np.ndarray:
        """dlib's 68 points on a 150 px chip (HOG box on the chip, else the usual one)."""
        chip = np.ascontiguousarray(chip, dtype=np.uint8)
        found = list(self.det(chip, 0))
        crect = max(found, key=lambda r: r.width() * r.height()) if found else self.chip_rect
        shape = self.sp68(chip, crect)
        return np.array([[p.x, p.y] for p in shape.parts()], np.float32)


def build_chipset(sources: Sequence[tuple[str | Path, str]], out: str | Path,
                  limit: int | None = None, quality: int = 90, progress: bool = True) -> Path:
    """Detect, align and landmark every photo of the sources; write one chip-set ``.npz``.

    Args:
        sources: (CSV or folder, source name) pairs.
        out: the ``.npz`` to write.
        limit: at most this many photos per source (the first ones; for tests).

    Photos where dlib finds no face or that fail to decode are skipped and counted.
    """
    from rich.progress import Progress

    from facelab.io.image import load_image

    maker = ChipMaker()
    chips, lms, srcs, ids, imgs = [], [], [], [], []
    skipped = 0
    with Progress(disable=not progress) as bar:
        for src, name in sources:
            df = list_images(src)
            if limit:
                df = df.head(limit)
            task = bar.add_task(f"chips {name}", total=len(df))
            for path, ident in zip(df["image"], df["identity"]):
                bar.advance(task)
                try:
                    got = maker(load_image(path))
                except Exception as exc:  # noqa: BLE001  (a bad photo is skipped, not fatal)
                    log.warning("skipping %s: %s", path, exc)
                    got = None
                if got is None:
                    skipped += 1
                    continue
                chips.append(got[0])
                lms.append(got[1])
                srcs.append(name)
                ids.append(f"{name}:{ident}" if ident else "")
                imgs.append(str(path))
    if not chips:
        raise DataFormatError(f"no face found in any photo of {[str(s) for s, _ in sources]}")
    log.info("chip set: %d faces, %d photos skipped", len(chips), skipped)
    cs = ChipSet(np.stack(chips), np.stack(lms), np.array(srcs), np.array(ids), np.array(imgs))
    return save_chipset(cs, out, quality)
