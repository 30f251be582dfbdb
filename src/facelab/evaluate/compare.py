"""Is run B better than run A? A paired bootstrap over persons on one split (validation by default).

Best-epoch validation scores of two runs differ by more than their settings: with a few
hundred validation faces, 0.01 of macro F1 can be one face (8 "incorrect" masks make one
face worth 0.04). This predicts both runs' best checkpoints on the same split rows, then
resamples *persons* with replacement and reports, per task, the macro-F1 difference with a
95% interval and the share of resamples in which B wins. Choose settings on the validation
split; the test split is for reporting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.labels import MISSING, TASK_CLASSES, TASKS
from facelab.errors import ConfigError
from facelab.predict.calibrate import macro_f1


def compare_probs(targets: dict[str, np.ndarray], probs_a: dict[str, np.ndarray],
                  probs_b: dict[str, np.ndarray], groups: np.ndarray, n: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per task with labels: n, f1_a, f1_b, diff (b - a), 95% interval of the diff
    and p_b_better (share of person resamples where B's macro F1 is higher)."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    rows = []
    for task in TASKS:
        known = np.flatnonzero(targets[task] != MISSING)
        if not len(known):
            continue
        k = TASK_CLASSES[task]
        y = targets[task][known].astype(int)
        pa, pb = probs_a[task][known].argmax(1), probs_b[task][known].argmax(1)
        _, person = np.unique(groups[known], return_inverse=True)
        members = np.split(np.argsort(person, kind="stable"), np.cumsum(np.bincount(person))[:-1])
        diffs = np.empty(n)
        for i in range(n):
            take = np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
            diffs[i] = macro_f1(y[take], pb[take], k) - macro_f1(y[take], pa[take], k)
        f1_a, f1_b = macro_f1(y, pa, k), macro_f1(y, pb, k)
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        rows.append({"task": task, "n": len(y), "persons": len(members), "f1_a": round(f1_a, 4),
                     "f1_b": round(f1_b, 4), "diff": round(f1_b - f1_a, 4),
                     "ci_low": round(float(lo), 4), "ci_high": round(float(hi), 4),
                     "p_b_better": round(float((diffs > 0).mean()), 3)})
    return pd.DataFrame(rows)


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "val", n: int = 1000,
                 seed: int = 0, calibrated: bool = False) -> pd.DataFrame:
    """Paired comparison of two runs' best checkpoints on the rows of `split` they share.

    The runs may differ in any setting, image size included (each reads its own pixels),
    but must hold the same split rows. Decision biases are off by default: they were tuned
    on the validation split, so applying them there would flatter the run that has them.

    Example:
        >>> compare_runs("runs/a", "runs/b")  # doctest: +SKIP
    """
    from facelab.predict.run import AttributeRun

    probs, keys, targets, groups = [], [], None, None
    data, data_cfg = None, None
    for run in (run_a, run_b):
        attr = AttributeRun.load(run, calibrated=calibrated)
        if attr.data != data_cfg:  # B reuses A's preparation when both read the same data
            data, data_cfg = attr.prepare_data(), attr.data
        idx = data.indices(split)
        if not len(idx):
            raise ConfigError(f"{run}: its {split!r} split is empty; compare on another split")
        key = data.table["source"].to_numpy()[idx].astype(str) + "/" + data.table["sample_id"].to_numpy()[idx].astype(str)
        probs.append(attr.predict_pixels(data.cache.pixels, idx))
        keys.append(key)
        if targets is None:
            targets = {t: data.targets[t][idx] for t in TASKS}
            groups = data.table["person"].to_numpy()[idx].astype(str)
    if len(keys[0]) != len(keys[1]) or not np.array_equal(keys[0], keys[1]):
        raise ConfigError(f"{run_a} and {run_b} hold different {split!r} rows (data sources, "
                          "fractions or split_seed differ); a paired comparison needs the same split")
    return compare_probs(targets, probs[0], probs[1], groups, n, seed)
