"""detect-eval on single-face photo folders, and the image-hash split parts."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelab.detect.base import Detector
from facelab.detect.evaluate import evaluate_photos, format_photo_table, sample_photos, split_rows
from facelab.errors import ConfigError, DataFormatError
from facelab.types import Face


class _Fixed(Detector):
    """Finds one centred face on wide images, two on tall ones, none on tiny ones."""

    def _detect_one(self, image):
        h, w = image.shape[:2]
        if w < 20:
            return []
        faces = [Face((w * 0.4, h * 0.4, w * 0.6, h * 0.6), 0.9)]
        if h > w:
            faces.append(Face((0, 0, 5, 5), 0.5))
        return faces


def test_photo_figures(tmp_path):
    for name, size in {"a.jpg": (40, 30), "b.jpg": (30, 40), "c.png": (10, 10)}.items():
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    files = sample_photos(tmp_path)
    assert [f.name for f in files] == ["a.jpg", "b.jpg", "c.png"]
    row = evaluate_photos(_Fixed(name="fixed"), files, batch_size=2, progress=False).row()
    assert row["found"] == pytest.approx(2 / 3) and row["extra"] == pytest.approx(1 / 3)
    assert row["width"] == pytest.approx(0.2) and row["centred"] == 1.0
    assert "| fixed | 0.667 | 0.333 | 0.200 | 1.000 |" in format_photo_table(
        [evaluate_photos(_Fixed(name="fixed"), files, progress=False)])
    assert len(sample_photos(tmp_path, 2)) == 2
    with pytest.raises(DataFormatError, match="not found"):
        sample_photos(tmp_path / "nope")


def test_split_rows_partition():
    df = pd.DataFrame({"image": [f"i{k}.jpg" for k in range(300)]})
    parts = {p: set(split_rows(df, p)["image"]) for p in ("test", "train", "fit", "val")}
    assert parts["fit"] | parts["val"] == parts["train"] and not parts["fit"] & parts["val"]
    assert not parts["train"] & parts["test"] and len(parts["train"] | parts["test"]) == 300
    assert 0.1 < len(parts["val"]) / len(parts["train"]) < 0.3
    with pytest.raises(ConfigError, match="split must be one of"):
        split_rows(df, "dev")
