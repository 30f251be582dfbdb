"""Cascade, cropper and the batch crop job, on synthetic images (no faces needed)."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelab.detect import Detector, register_detector
from facelab.detect.cascade import CascadeDetector, FaceCropper, parse_spec
from facelab.detect.crop_job import gather_inputs, run_crop_job
from facelab.errors import ConfigError
from facelab.types import Face


@register_detector("fake-one")
class _FakeOne(Detector):
    """Finds one 'face' in images whose top-left pixel is 255 (tests only)."""

    def _detect_one(self, image):
        if image[0, 0, 0] != 255:
            return []
        lm = np.array([[30, 40], [50, 40], [40, 50], [32, 60], [48, 60]], float)
        return [
            Face(box=(20.0, 30.0, 60.0, 70.0), score=0.9, landmarks=lm),
            Face(box=(0.0, 0.0, 10.0, 10.0), score=0.95),
        ]


def test_parse_spec_options_and_fallback():
    assert parse_spec("mtcnn(min_face_size=16, thresholds=[0.5,0.6,0.7])>haar>original") == (
        [("mtcnn", {"min_face_size": 16, "thresholds": [0.5, 0.6, 0.7]}), ("haar", {})],
        "original",
    )
    with pytest.raises(ConfigError):
        parse_spec("center>mtcnn")
    with pytest.raises(ConfigError):
        parse_spec("mtcnn(oops)")


def test_cropper_fallbacks_record_stage():
    img = np.zeros((100, 80, 3), np.uint8)
    out = FaceCropper("fake-one>center", center_fraction=0.5)(img)
    assert out.stage == "fallback:center" and out.face is None and out.crop.shape == (40, 40, 3)
    out = FaceCropper("fake-one>original", size=50, square=False)(img)
    assert out.stage == "fallback:original" and out.crop.shape == (50, 40, 3)
    out = FaceCropper("fake-one")(img)
    assert out.stage == "none" and out.crop.size == 0


def test_cropper_choose_margin_square_align():
    img = np.zeros((100, 100, 3), np.uint8)
    img[0, 0] = 255
    largest = FaceCropper("fake-one>center", margin=0.0)(img)
    assert largest.stage == "fake-one" and largest.face.box == (20.0, 30.0, 60.0, 70.0)
    assert largest.crop.shape == (40, 40, 3)
    assert FaceCropper("fake-one", choose="score")(img).face.box == (0.0, 0.0, 10.0, 10.0)
    assert FaceCropper("fake-one", choose="central")(img).face.box[0] == 20.0
    both = FaceCropper("fake-one", choose="all", size=32)(img)
    assert len(both.crops) == 2 and all(c.shape == (32, 32, 3) for c in both.crops)
    assert FaceCropper("fake-one", margin=0.5)(img).crop.shape == (80, 80, 3)
    aligned = FaceCropper("fake-one", align=True, size=64)(img)
    assert aligned.crop.shape == (64, 64, 3)


def test_cache_key_tracks_pixel_settings_only():
    base = FaceCropper("mtcnn>center")
    assert base.cache_key() == FaceCropper("mtcnn>center").cache_key()
    for other in (
        FaceCropper("mtcnn>original"),
        FaceCropper("mtcnn>center", margin=0.3),
        FaceCropper("mtcnn>center", square=False),
        FaceCropper("mtcnn>center", size=224),
        FaceCropper("mtcnn(min_face_size=40)>center"),
        FaceCropper("haar>center"),
        FaceCropper("mtcnn>center", align=True),
        FaceCropper("mtcnn>center", choose="central"),
    ):
        assert other.cache_key() != base.cache_key()


def test_cascade_detector_first_and_union():
    img = np.zeros((100, 100, 3), np.uint8)
    img[0, 0] = 255
    first = CascadeDetector("fake-one>fake-one").detect(img)
    assert len(first) == 2 and first[0].stage == "fake-one"
    union = CascadeDetector("fake-one>fake-one", mode="union").detect(img)
    assert len(union) == 2  # duplicates removed by NMS
    assert CascadeDetector("fake-one>haar").detect(np.zeros((50, 50, 3), np.uint8)) == []


def _write_inputs(folder):
    folder.mkdir()
    Image.fromarray(np.zeros((60, 40, 3), np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(np.zeros((30, 30, 4), np.uint8)).save(folder / "rgba.png")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(folder / "gray.png")
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(buf, "JPEG", exif=exif)
    (folder / "sub").mkdir()
    (folder / "sub" / "rotated.jpg").write_bytes(buf.getvalue())
    (folder / "broken.jpg").write_bytes(buf.getvalue()[:200])  # truncated


def test_crop_job_handles_odd_files_and_resumes(tmp_path):
    src = tmp_path / "imgs"
    _write_inputs(src)
    cropper = FaceCropper("haar>original", size=None, square=False)
    s = run_crop_job(src, tmp_path / "out", cropper, progress=False)
    assert s.done == 4 and [e[0] for e in s.errors] == ["broken.jpg"]
    df = pd.read_csv(tmp_path / "out" / "crops.csv")
    assert set(df.stage) == {"fallback:original"}
    rot = df[df.source == "sub/rotated.jpg"].iloc[0]
    assert (rot.crop_w, rot.crop_h) == (40, 80)  # EXIF orientation applied
    assert (tmp_path / "out" / "crops" / "sub" / "rotated.jpg.jpg").is_file()
    assert "broken.jpg" in (tmp_path / "out" / "errors.csv").read_text()
    again = run_crop_job(src, tmp_path / "out", cropper, progress=False)
    assert again.done == 0 and again.skipped == 4
    with pytest.raises(ConfigError, match="other settings"):
        run_crop_job(src, tmp_path / "out", FaceCropper("haar>center"), progress=False)


def test_gather_inputs_competition_csv(tmp_path):
    person = tmp_path / "images" / "000001_female_Asian_45"
    person.mkdir(parents=True)
    for n in ("mask1.jpg", "normal.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(person / n)
    pd.DataFrame({"id": ["000001"], "path": ["000001_female_Asian_45"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    names = [n for n, _ in gather_inputs(tmp_path / "train.csv")]
    assert names == [
        "images/000001_female_Asian_45/mask1.jpg",
        "images/000001_female_Asian_45/normal.png",
    ]


def test_large_images_map_every_point_set_back_to_source_pixels():
    """A photo above max_side is detected downscaled: the box, the 5 landmarks and the
    point sets kept in extra (dlib's 68, BlazeFace's 6) all come back in source pixels."""

    class _Points(Detector):
        def _detect_one(self, image):
            h, w = image.shape[:2]  # a face in the middle of whatever size it is given
            pts = np.array([[w * 0.4, h * 0.4], [w * 0.6, h * 0.4]], float)
            return [Face(box=(w * 0.25, h * 0.25, w * 0.75, h * 0.75), score=0.9,
                         landmarks=np.repeat(pts[:1], 5, 0),
                         extra={"keypoints6": np.repeat(pts, 3, 0), "landmarks68": np.repeat(pts, 34, 0)})]  # fmt: skip

    big = np.zeros((3000, 4000, 3), np.uint8)
    (face,) = _Points(name="points").detect(big)
    np.testing.assert_allclose(face.box, (1000, 750, 3000, 2250), rtol=1e-3)
    np.testing.assert_allclose(face.landmarks[0], (1600, 1200), rtol=1e-3)
    np.testing.assert_allclose(face.extra["keypoints6"][3], (2400, 1200), rtol=1e-3)
    np.testing.assert_allclose(face.extra["landmarks68"][0], (1600, 1200), rtol=1e-3)
