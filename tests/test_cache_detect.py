"""crop=detect: the pixel cache runs the detector cascade and records which stage cropped."""

import numpy as np
from PIL import Image

from facelab.data.cache import PixelCache, PixelSettings
from facelab.data.formats import SourceSpec, load_sources


def test_detect_mode_falls_back_to_a_center_crop_on_faceless_images(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    Image.new("RGB", (80, 60), (128, 128, 128)).save(tmp_path / "blank.jpg")
    stripes = np.zeros((60, 80, 3), np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    (tmp_path / "labels.csv").write_text("image,mask\nblank.jpg,wear\nstripes.png,not wear\n")
    table = load_sources([SourceSpec(kind="labels", path=str(tmp_path / "labels.csv"))])
    cache = PixelCache.build(table, PixelSettings(size=32, crop="detect", detector="mtcnn>center"))
    assert cache.ok.all()
    assert cache.pixels.shape == (2, 32, 32, 3)
    assert all("center" in stage for stage in cache.stages), cache.stages
