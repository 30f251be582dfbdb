"""Rank labels by how likely they are wrong (confident learning, cleanlab) and export the
corrections template a person reviews."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from facelab.data.labels import CLASS_NAMES, MISSING, TASKS
from facelab.errors import DataFormatError
from facelab.predict.probs import prob_columns

log = logging.getLogger(__name__)


def rank_label_issues(
    oof: pd.DataFrame, tasks=TASKS, filter_by: str = "prune_by_noise_rate"
) -> pd.DataFrame:
    """One row per (image, task) with a known label, most likely wrong first.

    `oof` has y_<task> labels and p_<task>_<class> out-of-fold probabilities (oof.csv from
    `facelab kfold`, or quick_oof). Per task, cleanlab's confident learning flags issues
    (`is_issue`) and scores label quality (self-confidence: the probability of the given
    label). Flagged rows come first, then all rows by quality, lowest first. Rows with a
    MISSING label or no probabilities are skipped.

    Example:
        >>> oof = pd.DataFrame({"key": list("abcd"), "y_gender": [0, 0, 1, 1],
        ...     "p_gender_male": [.9, .1, .2, .3], "p_gender_female": [.1, .9, .8, .7]})
        >>> rank_label_issues(oof, ["gender"])["key"].iloc[0]
        'b'
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    missing = [c for c in ["key"] if c not in oof.columns]
    if missing:
        raise DataFormatError(
            f"out-of-fold table lacks column(s) {missing}; use oof.csv from "
            "`facelab kfold` or `facelab clean --quick`"
        )
    parts = []
    for task in tasks:
        cols = prob_columns(task)
        if f"y_{task}" not in oof.columns or not set(cols) <= set(oof.columns):
            continue
        y = oof[f"y_{task}"].to_numpy(np.int64)
        p = oof[cols].to_numpy(float)
        keep = (y != MISSING) & np.isfinite(p).all(1)
        if len(np.unique(y[keep])) < 2:
            log.info("%s: fewer than two known classes, not ranked", task)
            continue
        y, p = y[keep], p[keep] / p[keep].sum(1, keepdims=True)
        quality = get_label_quality_scores(y, p, method="self_confidence")
        issue = find_label_issues(y, p, filter_by=filter_by)
        sub = oof.loc[keep].reset_index(drop=True)
        suggested = p.argmax(1)
        names = np.array(CLASS_NAMES[task])
        parts.append(
            pd.DataFrame(
                {
                    **{
                        c: sub[c]
                        for c in ("key", "row", "sample_id", "path", "x1", "y1", "x2", "y2")
                        if c in sub.columns
                    },
                    "task": task,
                    "given": names[y],
                    "suggested": names[suggested],
                    "confidence": p[np.arange(len(p)), suggested],
                    "quality": quality,
                    "is_issue": issue,
                }
            )
        )
    if not parts:
        raise DataFormatError("no task has known labels and probabilities to rank")
    ranked = pd.concat(parts, ignore_index=True)
    ranked = ranked.sort_values(
        ["is_issue", "quality"], ascending=[False, True], kind="stable", ignore_index=True
    )
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def corrections_template(
    ranked: pd.DataFrame, top: int | None = None, prefill: bool = False
) -> pd.DataFrame:
    """The corrections CSV to review: path,task,old,new (+ suggested, confidence, rank).

    `new` is blank (keep) unless `prefill`, where it holds the suggestion; a reviewer fills
    or clears it. Candidates are the flagged issues, or the `top` ranked rows when given.
    """
    rows = ranked.head(top) if top else ranked[ranked["is_issue"]]
    return pd.DataFrame(
        {
            "path": rows["key"].to_numpy(),
            "task": rows["task"].to_numpy(),
            "old": rows["given"].to_numpy(),
            "new": rows["suggested"].to_numpy() if prefill else "",
            "suggested": rows["suggested"].to_numpy(),
            "confidence": rows["confidence"].round(4).to_numpy(),
            "rank": rows["rank"].to_numpy(),
        }
    )
