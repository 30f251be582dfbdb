"""Prediction files: per-task probabilities for any image set, and the competition submission."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.cache import PixelCache
from facelab.data.formats import SourceSpec, empty_table, load_source
from facelab.data.labels import CLASS_NAMES, TASKS
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
    if csv:
        return load_source(SourceSpec("labels", csv))
    if boxes:
        return load_source(SourceSpec("boxes", boxes))
    return folder_table(folder)


def predict_table(run: str | Path, table: pd.DataFrame, tta: bool | None = None,
                  progress=None, calibrated: bool | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every row with a run's best model; returns (predictions, unreadable images).

    Predictions hold per-task probabilities (p_mask_correct, ...), the predicted task labels
    and the 18-class id `ans`. Rows whose image could not be read get the most frequent
    predicted class and `ok = False`. With decision biases (config `calibrate`, or
    `calibrated=True`) the probabilities and labels include them.

    Example:
        >>> preds, bad = predict_table("runs/mt", folder_table("photos"))  # doctest: +SKIP
    """
    from facelab.predict.calibrate import checkpoint_calibration
    from facelab.predict.inference import predict_pixels
    from facelab.predict.probs import prediction_frame
    from facelab.train.checkpoint import load_model

    model, cfg, ckpt = load_model(run)
    tta = cfg.tta if tta is None else tta
    cal = checkpoint_calibration(cfg, ckpt, calibrated)
    cache = PixelCache.build(table, cfg.data.pixel_settings(), progress=progress)
    ok = np.flatnonzero(cache.ok)
    probs = predict_pixels(model, cache.pixels, ok, tta=tta, channels_last=cfg.channels_last)
    if cal is not None:
        probs = cal.apply(probs)
    full = {t: np.zeros((len(table), len(CLASS_NAMES[t]))) for t in TASKS}
    for t in TASKS:
        full[t][ok] = probs[t]
    out = prediction_frame(table, full, cache.ok)
    out["crop_stage"] = cache.stages
    bad = pd.DataFrame({"path": table["path"].to_numpy()[sorted(cache.errors)],
                        "error": [cache.errors[i] for i in sorted(cache.errors)]})
    return out, bad


def write_submission(preds: pd.DataFrame, path: str | Path) -> None:
    """The competition's `ImageID,ans` file, rows in input order."""
    pd.DataFrame({"ImageID": preds["sample_id"], "ans": preds["ans"].astype(int)}).to_csv(
        path, index=False)
