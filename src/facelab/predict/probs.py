"""Per-task probabilities as table columns (p_<task>_<class>), shared by every prediction file.

The same column names are used by `facelab predict`, k-fold out-of-fold files, ensembles and
label cleaning, so one file can feed the next step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from facelab.data.labels import CLASS_NAMES, TASKS, encode_array


def prob_columns(task: str) -> list[str]:
    """Column names of one task's probabilities.

    Example:
        >>> prob_columns("gender")
        ['p_gender_male', 'p_gender_female']
    """
    return [f"p_{task}_{name}" for name in CLASS_NAMES[task]]


def probs_to_frame(
    probs: dict[str, np.ndarray], rows: np.ndarray | None = None, n: int | None = None
) -> pd.DataFrame:
    """Probability columns for `n` rows; `probs` fill `rows` (all rows when None), NaN elsewhere."""
    n = len(probs[TASKS[0]]) if n is None else n
    rows = np.arange(n) if rows is None else np.asarray(rows)
    cols = {}
    for task in TASKS:
        full = np.full((n, len(CLASS_NAMES[task])), np.nan)
        full[rows] = probs[task]
        cols.update({c: full[:, j] for j, c in enumerate(prob_columns(task))})
    return pd.DataFrame(cols)


def frame_to_probs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{task: (N, k)} from the p_<task>_<class> columns of a prediction file."""
    return {t: frame[prob_columns(t)].to_numpy(float) for t in TASKS}


def prediction_frame(
    base: pd.DataFrame, probs: dict[str, np.ndarray], ok: np.ndarray
) -> pd.DataFrame:
    """The `facelab predict` file: sample_id, path, ok, probabilities, task labels and `ans`.

    `probs` hold values for every row (rows with ok False are ignored); unreadable rows get
    label -1 and the most frequent predicted 18-class id, so a submission stays complete.
    """
    ok = np.asarray(ok, bool)
    out = pd.DataFrame(
        {"sample_id": base["sample_id"].to_numpy(), "path": base["path"].to_numpy(), "ok": ok}
    )
    for task in TASKS:  # column order as facelab.predict.predict.predict_table writes it
        p = np.where(ok[:, None], probs[task], np.nan)
        for j, col in enumerate(prob_columns(task)):
            out[col] = p[:, j]
        out[task] = np.where(ok, np.nan_to_num(probs[task]).argmax(1), -1)
    ans = encode_array(out["mask"], out["gender"], out["age"])
    if not ok.all():
        fill = int(pd.Series(ans[ok]).mode().iloc[0]) if ok.any() else 0
        ans = np.where(ok, ans, fill)
    out["ans"] = ans
    return out
