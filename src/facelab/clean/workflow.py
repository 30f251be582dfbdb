"""From out-of-fold probabilities to the three review files: ranked.csv, review.html and
corrections.csv."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.clean.rank import corrections_template, rank_label_issues
from facelab.clean.report import write_review_page
from facelab.errors import DataFormatError

log = logging.getLogger(__name__)


@dataclass
class CleanResult:
    ranked: pd.DataFrame
    ranked_csv: Path
    page: Path
    corrections_csv: Path


def read_oof(path: str | Path) -> pd.DataFrame:
    """Read an oof.csv with a clear error when it is missing or is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"{path}: out-of-fold file not found; run `facelab kfold` first "
            "(it writes OUT/oof.csv) or use `facelab clean --quick`"
        )
    oof = pd.read_csv(path, dtype={"key": str, "path": str, "sample_id": str})
    if "key" not in oof.columns or not any(c.startswith("y_") for c in oof.columns):
        raise DataFormatError(
            f"{path}: not an out-of-fold file (needs key, y_<task> and p_<task>_<class> columns)"
        )
    return oof


def clean_labels(
    oof: pd.DataFrame,
    out_dir: str | Path,
    pixels: np.ndarray | None = None,
    top: int = 200,
    prefill: bool = False,
    tasks=None,
) -> CleanResult:
    """Rank, write ranked.csv, review.html (top rows, thumbnails) and corrections.csv.

    `pixels` (the PreparedData cache the oof rows index) gives thumbnails without decoding.

    Example:
        >>> clean_labels(read_oof("runs/kf/oof.csv"), "runs/kf/clean")  # doctest: +SKIP
    """
    from facelab.data.labels import TASKS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked = rank_label_issues(oof, tasks or TASKS)
    ranked.to_csv(out / "ranked.csv", index=False)
    page = write_review_page(ranked, out / "review.html", pixels, top)
    corrections_template(ranked, None, prefill).to_csv(out / "corrections.csv", index=False)
    log.info("%d labels ranked, %d flagged", len(ranked), int(ranked["is_issue"].sum()))
    return CleanResult(ranked, out / "ranked.csv", page, out / "corrections.csv")
