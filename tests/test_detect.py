"""Detector backends: the shared interface, blank images, odd inputs, real-data sanity."""


import numpy as np
import pytest

from facelab.detect import available_detectors, get_detector
from facelab.errors import ConfigError, ImageDecodeError
from facelab.paths import data_root

MASK_DIR = data_root() / "face-mask-detection"
FAST = ["mtcnn", "haar", "dlib-hog"]


def test_registry_names():
    names = available_detectors()
    for n in ("mtcnn", "dlib-hog", "dlib-cnn", "haar"):
        assert n in names
    with pytest.raises(ConfigError, match="unknown detector"):
        get_detector("nope")


@pytest.mark.parametrize("name", [*FAST, "dlib-cnn"])
def test_blank_image_gives_no_faces(name):
    det = get_detector(name, **({"upsample": 0} if name == "dlib-cnn" else {}))
    assert det.name == name
    assert det.detect(np.zeros((120, 160, 3), np.uint8)) == []
    assert det.detect_batch([np.full((64, 64, 3), 255, np.uint8)] * 2) == [[], []]
    assert det.detect_batch([]) == []


def test_dlib_landmarks_options():
    det = get_detector("dlib-hog", landmarks="5")
    assert det.detect(np.zeros((40, 40, 3), np.uint8)) == []
    with pytest.raises(ConfigError):
        get_detector("dlib-hog", landmarks="7")


def test_weights_load_lazily_once():
    det = get_detector("mtcnn")
    assert not det._loaded  # nothing loads at construction
    det.detect(np.zeros((40, 40, 3), np.uint8))
    net = det.pnet
    det.detect(np.zeros((40, 40, 3), np.uint8))
    assert det.pnet is net


def test_gray_and_rgba_arrays_accepted_bad_dtype_rejected():
    det = get_detector("mtcnn")
    assert det.detect(np.zeros((50, 60), np.uint8)) == []
    assert det.detect(np.zeros((50, 60, 4), np.uint8)) == []
    with pytest.raises(ImageDecodeError, match="uint8"):
        det.detect(np.zeros((50, 60, 3), np.float32))
    with pytest.raises(ImageDecodeError, match="shape"):
        det.detect(np.zeros((50, 60, 2), np.uint8))


def _mask_images(n):
    if not (MASK_DIR / "boxes.csv").is_file():
        pytest.skip(f"face-mask-detection data not found under {MASK_DIR} (set FACELAB_DATA)")
    import pandas as pd

    from facelab.io import load_image

    df = pd.read_csv(MASK_DIR / "boxes.csv")
    names = list(dict.fromkeys(df.image))[:n]
    return [load_image(MASK_DIR / p) for p in names], [df[df.image == p] for p in names]


@pytest.mark.slow
def test_mtcnn_finds_real_faces_with_ordered_landmarks_and_batch_matches_single():
    images, gts = _mask_images(6)
    det = get_detector("mtcnn")
    single = [det.detect(im) for im in images]
    batch = det.detect_batch(images)
    n_found = 0
    for s, b, gt in zip(single, batch, gts):
        assert len(s) == len(b)
        for fs, fb in zip(s, b):
            np.testing.assert_allclose(fs.box, fb.box, atol=1.0)
        for f in s:
            lm = f.landmarks
            assert lm.shape == (5, 2)
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left before right
            assert lm[:2, 1].mean() < lm[3:, 1].mean()  # eyes above mouth
        n_found += len(s)
    assert n_found >= 0.5 * sum(len(g) for g in gts)
