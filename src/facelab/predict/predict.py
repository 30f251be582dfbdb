"""Prediction files: per-task probabilities for any image set, and the competition submission."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from facelab.data.formats import (
    SourceSpec,
    empty_table,
    load_boxes_csv,
    load_labels_csv,
    load_source,
)
from facelab.errors import DataFormatError
from facelab.io.image import is_image_file

log = logging.getLogger(__name__)


def folder_table(folder: str | Path) -> pd.DataFrame:
    """A sample table of every image file under `folder` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataFormatError(f"{folder}: no image files (.jpg, .png, ...) found")
    table = empty_table(len(files))
    table["path"] = [str(p.resolve()) for p in files]
    table["sample_id"] = [str(p.relative_to(folder)) for p in files]
    table["person"] = table["sample_id"]
    table["source"] = folder.name
    return table


def input_table(competition: str | None = None, csv: str | None = None,
                boxes: str | None = None, folder: str | None = None) -> pd.DataFrame:
    """The images to predict, from exactly one of: competition eval layout, labels CSV,
    boxes CSV, or a folder."""
    given = [x for x in (competition, csv, boxes, folder) if x]
    if len(given) != 1:
        raise DataFormatError("give exactly one input: --competition, --csv, --boxes or --folder")
    if competition:
        return load_source(SourceSpec("competition-eval", competition))
    if csv or boxes:  # prediction needs no labels: label columns are optional here
        path = Path(csv or boxes)
        table = (load_labels_csv if csv else load_boxes_csv)(path, require_labels=False)
        if not len(table):
            raise DataFormatError(f"{path}: no rows below the header; nothing to predict")
        table["sample_id"] = table["sample_id"].astype(str)
        table["person"] = table["sample_id"]
        return table
    return folder_table(folder)


def predict_table(run: str | Path, table: pd.DataFrame, tta: bool | None = None,
                  progress=None, calibrated: bool | None = None, backend: str = "torch"
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every row with a run's best model; returns (predictions, unreadable images).

    Predictions hold per-task probabilities (p_mask_correct, ...), the predicted task labels
    and the 18-class id `ans`. Rows whose image could not be used get the most frequent
    predicted class and `ok = False`. With decision biases (config `calibrate`, or
    `calibrated=True`) the probabilities and labels include them.

    Example:
        >>> preds, bad = predict_table("runs/mt", folder_table("photos"))  # doctest: +SKIP
    """
    from facelab.predict.run import AttributeRun

    attr = AttributeRun.load(run, tta=tta, calibrated=calibrated, backend=backend)
    return attr.predict_table(table, progress=progress)


def write_submission(preds: pd.DataFrame, path: str | Path) -> None:
    """The competition's `ImageID,ans` file, rows in input order."""
    pd.DataFrame({"ImageID": preds["sample_id"], "ans": preds["ans"].astype(int)}).to_csv(
        path, index=False)
