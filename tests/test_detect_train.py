"""detect-train pieces and a tiny end-to-end run on synthetic images."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelab.detect import get_detector
from facelab.detect.evaluate import iou_matrix, match, split_images
from facelab.detect.train import DetectTrainConfig, choose_threshold, label_boxes, train_detector
from facelab.errors import WeightsError


def test_label_boxes_iou_bands_and_offsets():
    gt = np.array([[10.0, 10, 29, 29]])
    boxes = np.array([[10.0, 10, 29, 29], [14, 10, 33, 29], [20, 10, 39, 29], [60, 60, 79, 79]])
    labels, offs = label_boxes(boxes, gt)
    assert labels.tolist() == [1, 1, -2, 0]
    np.testing.assert_allclose(offs[0], 0)
    # offsets move the box onto the ground truth: box + offs * (w, h, w, h) == gt
    w = boxes[1, 2] - boxes[1, 0] + 1
    np.testing.assert_allclose(boxes[1] + offs[1] * w, gt[0])


def test_choose_threshold_prefers_recall_at_target_precision():
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7])
    hits = np.array([1, 1, 0, 1, 0])
    thr, prec, rec = choose_threshold(scores, hits, n_gt=4, target=0.7)
    assert thr == 0.8 and prec == 0.75 and rec == 0.75
    thr, prec, _ = choose_threshold(scores, hits, n_gt=4, target=1.0)
    assert thr == 0.95 and prec == 1.0


def test_split_is_deterministic_and_disjoint():
    names = [f"img{i}.jpg" for i in range(400)]
    a, b = split_images(names), split_images(list(reversed(names)))
    assert a == b
    share = sum(v == "test" for v in a.values()) / len(a)
    assert 0.18 < share < 0.32


def test_match_is_one_to_one():
    gt = np.array([[0, 0, 10, 10]], float)
    det = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], float)
    g, d = match(gt, det, np.array([0.5, 0.9]))
    assert g.tolist() == [True] and d.tolist() == [False, True]
    assert iou_matrix(gt, np.zeros((0, 4))).shape == (1, 0)


def test_missing_weights_say_how_to_train(tmp_path):
    det = get_detector("mtcnn-mask", weights=str(tmp_path / "none.pt"))
    with pytest.raises(WeightsError, match="detect-train"):
        det.detect(np.zeros((30, 30, 3), np.uint8))


def test_train_tiny_synthetic_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        img = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        x, y = rng.integers(4, 30, 2)
        img[y : y + 24, x : x + 24] = (200, 170, 150)  # a flat "face" patch
        img[y + 7 : y + 10, x + 5 : x + 9] = 20  # "eyes"
        img[y + 7 : y + 10, x + 15 : x + 19] = 20
        Image.fromarray(img).save(tmp_path / f"im{i}.png")
        rows.append(
            {"image": f"im{i}.png", "x1": x, "y1": y, "x2": x + 24, "y2": y + 24, "label": "mask"}
        )
    pd.DataFrame(rows).to_csv(tmp_path / "boxes.csv", index=False)
    cfg = DetectTrainConfig(
        boxes=str(tmp_path),
        out=str(tmp_path / "m.pt"),
        epochs_pnet=1,
        epochs_rnet=1,
        epochs_onet=2,
        jitter_per_face=2,
        negatives_per_image=4,
        hard_per_image=5,
        min_face_size=16,
        precision_target=0.5,
    )
    meta = train_detector(cfg, progress=None)
    assert meta["train_images"] > 0 and meta["crops"][1] > 0
    assert len(meta["thresholds"]) == 3
    det = get_detector("mtcnn-mask", weights=str(tmp_path / "m.pt"))
    faces = det.detect(np.asarray(Image.open(tmp_path / "im0.png")))
    assert det.cfg.min_face_size == 16 and isinstance(faces, list)
    for f in faces:
        assert f.landmarks.shape == (5, 2) and f.stage == "mtcnn-mask"
