"""From a data config to training-ready arrays: sample table, targets, split, pixel cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.cache import PixelCache, PixelSettings
from facelab.data.formats import SourceSpec, load_sources
from facelab.data.labels import MISSING, TASKS, AgeScheme
from facelab.data.render_masks import apply_render_masks
from facelab.data.splits import check_no_leak, holdout_mask, strata

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """Everything training and evaluation read.

    Attributes:
        table: the sample table (see facelab.data.formats).
        targets: {task: (N,) int64} class indices, MISSING where unknown.
        split: (N,) array of "train" / "val" / "test".
        cache: decoded, cropped, resized pixels for every row.
        train_ok: rows usable for training (decoded, not in the age drop band).
    """

    table: pd.DataFrame
    targets: dict[str, np.ndarray]
    split: np.ndarray
    cache: PixelCache
    train_ok: np.ndarray

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split that decoded (train rows also honour the drop band)."""
        rows = (self.split == split) & self.cache.ok
        if split == "train":
            rows &= self.train_ok
        return np.flatnonzero(rows)

    def bad_images(self) -> pd.DataFrame:
        """Rows whose image could not be decoded: path and error message."""
        idx = sorted(self.cache.errors)
        return pd.DataFrame({"path": self.table["path"].to_numpy()[idx],
                             "error": [self.cache.errors[i] for i in idx]})


def make_targets(table: pd.DataFrame, scheme: AgeScheme) -> dict[str, np.ndarray]:
    """Task targets from the table: age groups derived from years under `scheme`."""
    age = np.where(table["age_group"].to_numpy() != MISSING, table["age_group"].to_numpy(),
                   scheme.groups(table["age"].to_numpy()))
    return {"mask": table["mask"].to_numpy(np.int64), "gender": table["gender"].to_numpy(np.int64),
            "age": age.astype(np.int64)}


def assign_splits(table: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int,
                  scheme: AgeScheme) -> np.ndarray:
    """Person-level stratified train / val / test assignment; leakage is checked, not assumed."""
    split = np.full(len(table), "train", dtype=object)
    rest = np.ones(len(table), bool)
    if test_fraction > 0:
        test = holdout_mask(table, test_fraction, seed, scheme)
        split[test], rest = "test", ~test
    if val_fraction > 0:
        sub = table[rest].reset_index(drop=True)
        val = holdout_mask(sub, val_fraction, seed + 1, scheme)
        split[np.flatnonzero(rest)[val]] = "val"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        check_no_leak(table[split == a], table[split == b], f"{a}/{b}")
    return split


def prepare(
    sources: list[SourceSpec],
    pixels: PixelSettings,
    scheme: AgeScheme,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 20240601,
    progress=None,
) -> PreparedData:
    """Load sources, split by person, and build (or reuse) the pixel cache.

    Example:
        >>> data = prepare([SourceSpec("labels", "utkface/labels.csv")], PixelSettings(),
        ...                AgeScheme())  # doctest: +SKIP
    """
    table = load_sources(sources)
    split = assign_splits(table, test_fraction, val_fraction, seed, scheme)
    table = apply_render_masks(table, split, sources)  # after the split: it must not move
    targets = make_targets(table, scheme)
    cache = PixelCache.build(table, pixels, progress=progress)
    train_ok = ~scheme.in_drop_band(table["age"].to_numpy())
    data = PreparedData(table, targets, split, cache, train_ok)
    for name in SPLITS:
        log.info("%s: %d images (%d persons)", name, len(data.indices(name)),
                 table.loc[split == name, "person"].nunique())
    return data


def sample_weights(data: PreparedData, idx: np.ndarray) -> np.ndarray:
    """Class-balanced draw weights: each stratum (source x labels) gets equal total weight."""
    key = strata(data.table.iloc[idx].reset_index(drop=True))
    counts = np.bincount(key)
    w = 1.0 / counts[key]
    return w / w.sum()


def write_split(data: PreparedData, path: Path) -> None:
    """Save the split (sample id, person, split, usable) for audit and for evaluate/predict."""
    pd.DataFrame({
        "sample_id": data.table["sample_id"], "source": data.table["source"],
        "person": data.table["person"], "split": data.split, "decoded": data.cache.ok,
        **{f"y_{t}": data.targets[t] for t in TASKS},
    }).to_csv(path, index=False)
