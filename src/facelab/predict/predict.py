"""Prediction files: per-task probabilities for any image set, and the competition submission."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facelab.data.cache import PixelCache
from facelab.data.formats import SourceSpec, empty_table, load_source
from facelab.data.labels import CLASS_NAMES, TASKS, encode_array
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
                  progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predict every row with a run's best model; returns (predictions, unreadable images).

    Predictions hold per-task probabilities (p_mask_correct, ...), the predicted task labels
    and the 18-class id `ans`. Rows whose image could not be read get the most frequent
    predicted class and `ok = False`.

    Example:
        >>> preds, bad = predict_table("runs/mt", folder_table("photos"))  # doctest: +SKIP
    """
    from facelab.predict.inference import predict_pixels
    from facelab.train.checkpoint import load_model

    model, cfg, _ = load_model(run)
    tta = cfg.tta if tta is None else tta
    cache = PixelCache.build(table, cfg.data.pixel_settings(), progress=progress)
    ok = np.flatnonzero(cache.ok)
    probs = predict_pixels(model, cache.pixels, ok, tta=tta, channels_last=cfg.channels_last)
    out = pd.DataFrame({"sample_id": table["sample_id"].to_numpy(), "path": table["path"].to_numpy(),
                        "ok": cache.ok})
    for task in TASKS:
        full = np.full((len(table), len(CLASS_NAMES[task])), np.nan)
        full[ok] = probs[task]
        for j, name in enumerate(CLASS_NAMES[task]):
            out[f"p_{task}_{name}"] = full[:, j]
        pred = np.full(len(table), -1)
        pred[ok] = probs[task].argmax(1)
        out[task] = pred
    ans = encode_array(out["mask"], out["gender"], out["age"])
    if len(ok) < len(table):
        fill = int(pd.Series(ans[ok]).mode().iloc[0]) if len(ok) else 0
        ans = np.where(cache.ok, ans, fill)
    out["ans"] = ans
    out["crop_stage"] = cache.stages
    bad = pd.DataFrame({"path": table["path"].to_numpy()[sorted(cache.errors)],
                        "error": [cache.errors[i] for i in sorted(cache.errors)]})
    return out, bad


def write_submission(preds: pd.DataFrame, path: str | Path) -> None:
    """The competition's `ImageID,ans` file, rows in input order."""
    pd.DataFrame({"ImageID": preds["sample_id"], "ans": preds["ans"].astype(int)}).to_csv(
        path, index=False)
