"""Preprocessing cache: decode, crop and resize every image once, then train from memory.

The cache is a uint8 array (N, S, S, 3) memory-mapped from disk, keyed by everything that
changes pixels (file identity, box, crop mode, margin, size, detector settings). Building is
resumable: rows are written in chunks and a status file records which are done, so an
interrupted build continues where it stopped. Files that cannot be decoded are recorded with
their error and skipped; callers list them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from facelab.align.crop import crop_box, usable_box
from facelab.errors import ConfigError, DataFormatError, FacelabError, ImageDecodeError
from facelab.io.image import load_image
from facelab.paths import cache_root

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PENDING, DONE, FAILED = 0, 1, 2
CROP_MODES = ("auto", "none", "box", "detect")
# Smaller images cannot hold a face; predicting on them would be a guess marked ok.
MIN_IMAGE_SIDE = 8


@dataclass(frozen=True)
class PixelSettings:
    """Everything that decides the pixels of a cached sample.

    Attributes:
        size: output side in pixels (square).
        crop: "auto" (use the row's box when it has one, else the whole image), "none"
            (whole image), "box" (the row's box; rows without one fall back to the whole
            image) or "detect" (run the face detector cascade in `detector`).
        margin: context added around a box on each side, as a fraction of its size.
        square: square the box before cropping, keeping the face's aspect ratio.
        detector: cascade spec for crop="detect", e.g. "mtcnn>center".
    """

    size: int = 128
    crop: str = "auto"
    margin: float = 0.2
    square: bool = True
    detector: str = "mtcnn>center"

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ConfigError(f"crop mode {self.crop!r} unknown; use one of {CROP_MODES}")
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"image size {self.size} out of range 16..1024")


class RowDecoder:
    """Turns one sample-table row into an (S, S, 3) uint8 array under given settings."""

    def __init__(self, settings: PixelSettings):
        self.settings = settings
        self._cropper = None

    def cropper(self):
        """The detector cascade for crop="detect", created on first use."""
        if self._cropper is None:
            from facelab.detect.cascade import FaceCropper  # heavy; only for detect mode

            self._cropper = FaceCropper(
                self.settings.detector, margin=self.settings.margin, square=self.settings.square
            )
        return self._cropper

    def key(self, detects: bool = False) -> str:
        """The settings' cache key; `detects`: some rows crop with the detector even though
        `crop` is not "detect" (a source's own crop mode), so its key counts too."""
        extra = self.cropper().cache_key() if self.settings.crop == "detect" or detects else ""
        return json.dumps({**asdict(self.settings), "detector_key": extra, "v": CACHE_VERSION})

    def __call__(self, row: pd.Series) -> tuple[np.ndarray, str]:
        """Decode, crop and resize; returns (pixels, stage) where stage names the crop used."""
        return self.decode(row["path"], row_box(row), crop=row_crop(row))

    def decode(self, source, box=None, name: str | None = None, crop: str | None = None) -> tuple[np.ndarray, str]:
        """`__call__` for a file path or file bytes and an optional face box; `crop`
        overrides the settings' crop mode (a source's own mode)."""
        s = self.settings
        mode = crop or s.crop
        if name is None:
            name = str(source) if isinstance(source, (str, Path)) else "<image bytes>"
        if mode in ("auto", "box") and box is not None or mode == "detect":
            image = load_image(source)
        else:  # whole image: decode JPEGs at reduced scale, the result is resized anyway
            image = load_image(source, max_side=2 * s.size)
        return self.from_image(image, box, name=name, crop=mode)

    def from_image(self, image: np.ndarray, box=None, name: str = "<image>",
                   crop: str | None = None) -> tuple[np.ndarray, str]:
        """The same pixels as `__call__` for an image already in memory (RGB uint8 HxWx3) and
        an optional face box; the one code path for the cache and for in-memory inference."""
        s = self.settings
        mode = crop or s.crop
        h, w = image.shape[:2]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise ImageDecodeError(f"{name}: image is only {w}x{h} pixels, too small to hold "
                                   f"a face (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed)")
        if mode == "detect":
            result = self.cropper()(image)
            face, stage = result.crop, result.stage
        elif mode in ("auto", "box") and box is not None:
            box = usable_box(box, (h, w), name)
            face, stage = crop_box(image, box, margin=s.margin, square=s.square), "box"
        else:
            face, stage = image, "none"
        resized = Image.fromarray(face).resize((s.size, s.size), Image.BILINEAR)
        return np.asarray(resized, dtype=np.uint8), stage


def own_crop_mode(mode) -> str | None:
    """A ``crop_mode`` cell as a source's own crop mode, or None (empty / "auto": the
    settings' mode applies)."""
    return mode if isinstance(mode, str) and mode not in ("", "auto") else None


def row_crop(row: pd.Series) -> str | None:
    """The row's own crop mode (its source's ``crop``), or None to use the settings'."""
    return own_crop_mode(row.get("crop_mode"))


def detect_rows(table: pd.DataFrame) -> bool:
    """True when some row crops with the detector by its source's own mode."""
    return "crop_mode" in table and bool((table["crop_mode"] == "detect").any())


def row_box(row: pd.Series):
    """The row's face box as floats, or None when the row has none."""
    try:
        box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{row['path']}: box values must be numbers ({exc})") from None
    return None if all(np.isnan(v) for v in box) else box


def _fingerprint(table: pd.DataFrame, decoder: RowDecoder) -> str:
    h = hashlib.sha1(decoder.key(detect_rows(table)).encode())
    modes = table["crop_mode"] if "crop_mode" in table else pd.Series([None] * len(table))
    for (path, *box), mode in zip(table[["path", "x1", "y1", "x2", "y2"]].itertuples(index=False), modes):
        try:
            st = os.stat(path)
            ident = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            ident = "missing"
        # a source's own crop mode joins the key only when set: other caches keep their keys
        own = f"|{mode}" if own_crop_mode(mode) else ""
        h.update(f"{path}|{ident}|{box}{own}\n".encode())
    return h.hexdigest()[:20]


class PixelCache:
    """Decoded, cropped, resized images for every row of a sample table.

    Attributes:
        pixels: (N, S, S, 3) uint8 memmap; rows that failed are zeros.
        ok: (N,) bool, True where the row decoded.
        errors: {row index: message} for rows that failed.
        stages: per-row crop stage ("box", "none", detector name, "fallback:...").

    Example:
        >>> cache = PixelCache.build(table, PixelSettings(size=128))  # doctest: +SKIP
        >>> batch = cache.pixels[[0, 5, 9]]
    """

    def __init__(self, folder: Path, n: int, size: int):
        self.folder = folder
        self.pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        if self.pixels.shape != (n, size, size, 3):
            raise FacelabError(f"cache {folder} has shape {self.pixels.shape}; delete the folder")
        status = np.load(folder / "status.npy")
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
        self.ok = status == DONE
        self.errors = {int(k): v for k, v in meta.get("errors", {}).items()}
        self.stages = meta.get("stages", [""] * n)

    @classmethod
    def build(
        cls,
        table: pd.DataFrame,
        settings: PixelSettings,
        folder: Path | None = None,
        workers: int = 2,
        chunk: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> "PixelCache":
        """Build (or resume, or just open) the cache for `table` under `settings`."""
        decoder = RowDecoder(settings)
        n, size = len(table), settings.size
        folder = folder or cache_root() / "pixels" / _fingerprint(table, decoder)
        folder.mkdir(parents=True, exist_ok=True)
        status_file, meta_file = folder / "status.npy", folder / "meta.json"
        pixels = np.lib.format.open_memmap(
            folder / "pixels.npy", mode="r+" if status_file.exists() else "w+",
            dtype=np.uint8, shape=(n, size, size, 3),
        )
        status = np.load(status_file) if status_file.exists() else np.zeros(n, np.int8)
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        errors, stages = meta.get("errors", {}), meta.get("stages", [""] * n)
        todo = np.flatnonzero(status == PENDING)
        if progress:
            progress(n - len(todo), n)
        # Detector cascades hold torch models: decode with one thread there.
        pool = ThreadPoolExecutor(max_workers=1 if settings.crop == "detect" or detect_rows(table) else workers)

        def work(i: int):
            try:
                return i, *decoder(table.iloc[i]), None
            except FacelabError as exc:
                return i, None, "", str(exc)

        with pool:
            for start in range(0, len(todo), chunk):
                for i, arr, stage, err in pool.map(work, todo[start : start + chunk]):
                    if err is None:
                        pixels[i], stages[i], status[i] = arr, stage, DONE
                    else:
                        errors[str(i)], status[i] = err, FAILED
                pixels.flush()  # pixels reach disk before the status that vouches for them
                meta_file.write_text(json.dumps({"errors": errors, "stages": stages}))
                np.save(status_file, status)
                if progress:
                    progress(int((status != PENDING).sum()), n)
        del pixels
        if errors:
            log.warning("%d image(s) could not be decoded and are skipped, e.g. %s",
                        len(errors), next(iter(errors.values())))
        return cls(folder, n, size)
