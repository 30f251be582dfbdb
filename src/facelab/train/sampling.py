"""Which training rows an epoch visits, in which order: uniform, class-balanced,
source-balanced, or one of each person's correct-mask photos (the competition layout has
five per person)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.formats import COMPETITION_STEMS
from facelab.data.prepare import PreparedData, sample_weights

# Competition file stems of the correct-mask ("wear") photos: mask1 .. mask5.
WEAR_STEMS = frozenset(stem for stem, mask in COMPETITION_STEMS.items() if mask == 0)


def wear_rows(table: pd.DataFrame) -> np.ndarray:
    """(N,) bool: rows that are competition correct-mask photos (file stem mask1..mask5)."""
    return np.array([Path(p).stem.lower() in WEAR_STEMS for p in table["path"]], dtype=bool)


def one_wear_per_person(table: pd.DataFrame, idx: np.ndarray, rng: np.random.Generator,
                        wear: np.ndarray | None = None) -> np.ndarray:
    """Rows `idx` with each person's wear photos thinned to one random photo (sorted).

    Rows that are not wear photos (incorrect, normal, other data sets) are all kept.

    Example:
        >>> t = pd.DataFrame({"path": ["a/mask1.jpg", "a/mask2.jpg", "a/normal.jpg"],
        ...                   "person": ["a", "a", "a"]})
        >>> len(one_wear_per_person(t, np.arange(3), np.random.default_rng(0)))
        2
    """
    wear = (wear_rows(table) if wear is None else wear)[idx]
    w = pd.DataFrame({"row": idx[wear], "person": table["person"].to_numpy()[idx[wear]],
                      "key": rng.random(int(wear.sum()))})
    chosen = w.sort_values("key", kind="stable").drop_duplicates("person")["row"].to_numpy()
    return np.sort(np.concatenate([idx[~wear], chosen]))


def source_weights(table: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
    """Draw weights over rows `idx` giving every source (data set) the same total weight, so a
    large source cannot drown a small one's framing or population.

    Example:
        >>> t = pd.DataFrame({"source": ["a"] * 3 + ["b"]})
        >>> source_weights(t, np.arange(4)).round(3).tolist()
        [0.167, 0.167, 0.167, 0.5]
    """
    _, key = np.unique(table["source"].to_numpy()[idx], return_inverse=True)
    w = 1.0 / np.bincount(key)[key]
    return w / w.sum()


def epoch_order(data: PreparedData, idx: np.ndarray, sampler: str,
                rng: np.random.Generator, wear: np.ndarray | None = None) -> np.ndarray:
    """Training rows of one epoch in visiting order, drawn from `rng` (seeded per epoch)."""
    if sampler == "balanced":
        return rng.choice(idx, size=len(idx), replace=True, p=sample_weights(data, idx))
    if sampler == "source_balanced":
        return rng.choice(idx, size=len(idx), replace=True, p=source_weights(data.table, idx))
    if sampler == "one_wear_per_person":
        idx = one_wear_per_person(data.table, idx, rng, wear)
    return idx[rng.permutation(len(idx))]
