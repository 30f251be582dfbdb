"""The 18-class label scheme: mask state x gender x age group, and its configurable age bands.

Class id = mask * 6 + gender * 3 + age, with mask: correct 0, incorrect 1, none 2;
gender: male 0, female 1; age: <30 0, 30-59 1, >=60 2. Missing labels are -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facelab.errors import ConfigError, DataFormatError

MISSING = -1
TASKS = ("mask", "gender", "age")
TASK_CLASSES = {"mask": 3, "gender": 2, "age": 3}
CLASS_NAMES = {
    "mask": ("correct", "incorrect", "none"),
    "gender": ("male", "female"),
    "age": ("<30", "30-59", ">=60"),
}
NUM_CLASSES = 18

# Spellings accepted in CSVs for each task (lower-cased); integers 0..k-1 also work.
_ALIASES = {
    "mask": {
        "correct": 0, "wear": 0, "with_mask": 0, "mask": 0, "masked": 0, "worn": 0,
        "incorrect": 1, "mask_weared_incorrect": 1, "incorrect_mask": 1, "mask_worn_incorrectly": 1,
        "none": 2, "not wear": 2, "not_wear": 2, "without_mask": 2, "no_mask": 2, "normal": 2,
        "unmasked": 2, "nomask": 2,
    },
    "gender": {"male": 0, "m": 0, "man": 0, "female": 1, "f": 1, "woman": 1},
}


@dataclass(frozen=True)
class AgeScheme:
    """Age-group boundaries: group 0 is age < young_max, group 2 is age >= old_min.

    The competition uses 30/60; seeds moved 60 to 58 or 57 to fight the tiny >=60 class.
    `drop_band` removes training samples whose age lies in [lo, hi] (e.g. (57, 59)):
    ambiguous ages near the boundary. It applies to training only, never to evaluation.

    Example:
        >>> AgeScheme(old_min=58).group(58)
        2
    """

    young_max: int = 30
    old_min: int = 60
    drop_band: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.young_max < self.old_min:
            raise ConfigError(
                f"age thresholds must satisfy 0 < young_max < old_min, got "
                f"{self.young_max} and {self.old_min}"
            )
        if self.drop_band is not None and self.drop_band[0] > self.drop_band[1]:
            raise ConfigError(f"age drop_band {self.drop_band} must be (low, high) with low <= high")

    def group(self, age: float | int | None) -> int:
        """Age group (0, 1, 2) for an age in years, or MISSING for None/NaN."""
        if age is None or (isinstance(age, float) and np.isnan(age)) or age < 0:
            return MISSING
        if age < self.young_max:
            return 0
        return 2 if age >= self.old_min else 1

    def groups(self, ages: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`group` over an array of ages (NaN -> MISSING)."""
        ages = np.asarray(ages, dtype=float)
        out = np.where(ages < self.young_max, 0, np.where(ages >= self.old_min, 2, 1))
        return np.where(np.isnan(ages) | (ages < 0), MISSING, out).astype(np.int64)

    def soft_groups(self, ages: np.ndarray, sigma: float) -> np.ndarray:
        """(N, 3) age-group probabilities of an age read with Gaussian noise of `sigma` years.

        Ages are whole years, so the boundaries sit half a year below each threshold. A
        29-year-old with sigma 2 is 0.60 "<30" and 0.40 "30-59"; a 45-year-old is all
        "30-59". Rows with an unknown age are NaN.

        Example:
            >>> AgeScheme().soft_groups(np.array([29, 45]), 2.0).round(2).tolist()
            [[0.6, 0.4, 0.0], [0.0, 1.0, 0.0]]
        """
        from scipy.stats import norm

        if not sigma > 0:
            raise ConfigError(f"soft age groups need sigma > 0 years, got {sigma}")
        ages = np.asarray(ages, dtype=float)
        young = norm.cdf((self.young_max - 0.5 - ages) / sigma)
        old = norm.sf((self.old_min - 0.5 - ages) / sigma)
        out = np.stack([young, 1 - young - old, old], 1).clip(0, 1)
        out /= out.sum(1, keepdims=True)
        out[np.isnan(ages) | (ages < 0)] = np.nan
        return out

    def in_drop_band(self, ages: np.ndarray) -> np.ndarray:
        """Boolean mask of ages inside the training drop band (False where no band is set)."""
        ages = np.asarray(ages, dtype=float)
        if self.drop_band is None:
            return np.zeros(ages.shape, dtype=bool)
        lo, hi = self.drop_band
        return (ages >= lo) & (ages <= hi)


def encode(mask: int, gender: int, age: int) -> int:
    """The 18-class id of a (mask, gender, age-group) triple.

    Example:
        >>> encode(2, 1, 2)
        17
    """
    for task, value in zip(TASKS, (mask, gender, age)):
        if not 0 <= int(value) < TASK_CLASSES[task]:
            raise DataFormatError(f"{task} label {value} out of range 0..{TASK_CLASSES[task] - 1}")
    return int(mask) * 6 + int(gender) * 3 + int(age)


def decode(class_id: int) -> tuple[int, int, int]:
    """(mask, gender, age-group) of an 18-class id.

    Example:
        >>> decode(17)
        (2, 1, 2)
    """
    if not 0 <= int(class_id) < NUM_CLASSES:
        raise DataFormatError(f"class id {class_id} out of range 0..17")
    c = int(class_id)
    return c // 6, (c // 3) % 2, c % 3


def encode_array(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Vectorised :func:`encode`; any MISSING component gives MISSING."""
    mask, gender, age = (np.asarray(a, dtype=np.int64) for a in (mask, gender, age))
    out = mask * 6 + gender * 3 + age
    return np.where((mask < 0) | (gender < 0) | (age < 0), MISSING, out)


def parse_task_value(task: str, value: object, where: str) -> int:
    """Turn a CSV cell into a class index for `task` ('mask' or 'gender'); blank -> MISSING.

    Raises:
        DataFormatError: the value is not a known spelling; the message lists the known ones.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    text = str(value).strip().lower()
    if text in ("", "nan", "none_label", "-1", "?"):
        return MISSING
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < TASK_CLASSES[task]:
            return idx
    elif text in _ALIASES[task]:
        return _ALIASES[task][text]
    known = ", ".join(sorted(_ALIASES[task]))
    raise DataFormatError(
        f"{where}: unknown {task} label {value!r}; use 0..{TASK_CLASSES[task] - 1} or one of: {known}"
    )
