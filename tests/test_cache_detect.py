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


def test_a_source_keeps_its_own_crop_mode(tmp_path, monkeypatch):
    """Close-up photos cropped by the detector while a boxes source keeps its boxes: each
    source's `crop` reaches its rows, the cache key, and bad modes are refused."""
    import pytest

    from facelab.errors import DataFormatError

    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:30, 20:40] = 200  # the "face" the box points at
    Image.fromarray(img).save(tmp_path / "scene.png")
    Image.new("RGB", (80, 60), (90, 90, 90)).save(tmp_path / "photo.png")
    (tmp_path / "boxes.csv").write_text("image,x1,y1,x2,y2,label\nscene.png,20,10,40,30,with_mask\n")
    (tmp_path / "labels.csv").write_text("image,mask\nphoto.png,wear\n")
    boxes = SourceSpec(kind="boxes", path=str(tmp_path / "boxes.csv"))
    photos = SourceSpec(kind="labels", path=str(tmp_path / "labels.csv"), crop="detect")
    table = load_sources([boxes, photos])
    assert table["crop_mode"].isna().iloc[0] and table["crop_mode"].iloc[1] == "detect"
    cache = PixelCache.build(table, PixelSettings(size=16, crop="auto", detector="mtcnn>center"))
    assert cache.stages == ["box", "fallback:center"]
    assert cache.pixels[0].mean() > 80  # the box crop (20% margin): half bright square; whole image ~17
    plain = load_sources([boxes, SourceSpec(kind="labels", path=str(tmp_path / "labels.csv"))])
    assert "crop_mode" not in plain  # an auto source adds nothing: old caches keep their keys
    other = PixelCache.build(plain, PixelSettings(size=16, crop="auto", detector="mtcnn>center"))
    assert other.folder != cache.folder and other.stages == ["box", "none"]
    # a boxes source told to use whole images
    whole = load_sources([SourceSpec(kind="boxes", path=str(tmp_path / "boxes.csv"), crop="none")])
    assert PixelCache.build(whole, PixelSettings(size=16)).stages == ["none"]
    with pytest.raises(DataFormatError, match="crop 'tight' unknown"):
        load_sources([SourceSpec(kind="labels", path=str(tmp_path / "labels.csv"), crop="tight")])
