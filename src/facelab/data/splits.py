"""Person-level splits: a holdout and k folds in which no person (group) is on two sides.

Groups come from the sample table's `person` column (photos of one person, faces of one
scene, exact-duplicate files). Stratification keeps each fold's label mix close to the whole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from facelab.data.labels import AgeScheme
from facelab.errors import ConfigError, LeakageError


def strata(table: pd.DataFrame, scheme: AgeScheme | None = None) -> np.ndarray:
    """An integer stratum per row: source x mask x gender x age group (unknowns count as a value)."""
    scheme = scheme or AgeScheme()
    groups = np.where(
        table["age_group"].to_numpy() >= 0, table["age_group"].to_numpy(),
        scheme.groups(table["age"].to_numpy()),
    )
    key = (
        table["source"].astype(str) + "|" + table["mask"].astype(str) + "|"
        + table["gender"].astype(str) + "|" + pd.Series(groups, index=table.index).astype(str)
    )
    return pd.factorize(key)[0]


def kfold_assign(
    table: pd.DataFrame, n_folds: int = 5, seed: int = 0, scheme: AgeScheme | None = None
) -> np.ndarray:
    """Fold index (0..n_folds-1) per row; one person's rows all get the same fold.

    Example:
        >>> folds = kfold_assign(table, n_folds=5, seed=0)  # doctest: +SKIP
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    persons = pd.factorize(table["person"])[0]
    if len(np.unique(persons)) < n_folds:
        raise ConfigError(
            f"only {len(np.unique(persons))} persons/groups for {n_folds} folds; use fewer folds"
        )
    y = strata(table, scheme)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(table), -1, dtype=np.int64)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(table)), y, groups=persons)):
        folds[test_idx] = k
    check_folds(table, folds)
    return folds


def holdout_mask(
    table: pd.DataFrame, fraction: float = 0.2, seed: int = 0, scheme: AgeScheme | None = None
) -> np.ndarray:
    """Boolean mask of the held-out rows (about `fraction` of them), person-level and stratified."""
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
    n_folds = max(2, int(round(1 / fraction)))
    return kfold_assign(table, n_folds, seed, scheme) == 0


def check_no_leak(train: pd.DataFrame, test: pd.DataFrame, what: str = "train/test") -> None:
    """Raise :class:`LeakageError` if a person or an identical image file is on both sides."""
    shared = set(train["person"]) & set(test["person"])
    if shared:
        example = sorted(shared)[0]
        raise LeakageError(
            f"{what} split leaks {len(shared)} person group(s), e.g. {example!r}: the same "
            "person would be trained on and evaluated; split by person (facelab does so by "
            "default) or fix the person ids"
        )
    paths = set(train["path"]) & set(test["path"])
    if paths:
        raise LeakageError(
            f"{what} split leaks {len(paths)} image file(s) present on both sides, "
            f"e.g. {sorted(paths)[0]}"
        )


def check_folds(table: pd.DataFrame, folds: np.ndarray) -> None:
    """Raise :class:`LeakageError` if any person spans two folds (e.g. a user-supplied fold column)."""
    per_person = pd.Series(folds).groupby(table["person"].to_numpy()).nunique()
    leaking = per_person[per_person > 1]
    if len(leaking):
        raise LeakageError(
            f"{len(leaking)} person group(s) appear in more than one fold, e.g. "
            f"{leaking.index[0]!r}; every photo of a person must be in one fold"
        )
