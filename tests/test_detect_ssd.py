"""ssd-mbv2: anchors and box coding, augmentation, training split, ONNX parity, registry."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facelab.detect import available_detectors, get_detector
from facelab.detect.cascade import detector_from_spec
from facelab.detect.evaluate import split_images
from facelab.detect.ssd import (
    anchors_for,
    decode,
    encode,
    faces_from_outputs,
    letterbox_batch,
    repo_weights,
)
from facelab.detect.ssd_train import (
    SSDTrainConfig,
    assign,
    augment,
    mosaic,
    train_ssd,
    unannotated_faces,
)
from facelab.errors import ConfigError, WeightsError


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    anchors = anchors_for(96, 128)[rng.choice(len(anchors_for(96, 128)), 20)]
    xy = rng.uniform(0, 80, (20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (20, 2))], 1)
    marks = rng.uniform(0, 100, (20, 5, 2))
    tb, tl = encode(anchors, boxes, marks)
    b, m = decode(anchors, tb, tl)
    np.testing.assert_allclose(b, boxes, atol=1e-3)
    np.testing.assert_allclose(m, marks, atol=1e-3)


def test_anchor_count_matches_levels():
    # strides 8/16/32, 2 anchors each, sides rounded up
    assert len(anchors_for(100, 64)) == 2 * (13 * 8 + 7 * 4 + 4 * 2)


def test_letterbox_keeps_aspect_and_pads_to_32():
    canvas, scales = letterbox_batch([np.zeros((300, 400, 3), np.uint8),
                                      np.zeros((500, 100, 3), np.uint8)], 480)  # fmt: skip
    assert canvas.shape == (2, 480, 480, 3) and scales == [1.2, 0.96]
    assert (canvas[1, :, 100:] == 114).all()  # grey border right of the narrow image


def test_decoded_faces_map_back_to_source_pixels():
    anchors = np.array([[40.0, 40, 20, 20], [80, 80, 20, 20]], np.float32)
    logits = np.array([5.0, -5.0])
    faces = faces_from_outputs(np.zeros((2, 4)), logits, np.zeros((2, 10)), anchors, 2.0,
                               (100, 100), 0.5)  # fmt: skip
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, (15, 15, 25, 25))
    assert faces[0].landmarks.shape == (5, 2) and faces[0].score > 0.99


def test_assign_gives_every_face_an_anchor_and_respects_ignore():
    anchors = anchors_for(128, 128)
    boxes = np.array([[10.0, 10, 19, 19], [60, 60, 100, 100]])
    marks = np.full((2, 5, 2), np.nan)
    marks[1] = [[70, 70], [90, 70], [80, 80], [72, 92], [88, 92]]
    labels, tbox, tlm, lmask = assign(anchors, boxes, marks, np.array([False, False]))
    axy = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    pos = np.nonzero(labels == 1)[0]
    b, _ = decode(anchors[pos], tbox[pos], tlm[pos])
    assert any(np.allclose(x, boxes[0], atol=1e-3) for x in b)
    assert any(np.allclose(x, boxes[1], atol=1e-3) for x in b)
    assert lmask[pos].any() and not lmask[labels != 1].any()
    labels2, *_ = assign(anchors, boxes, marks, np.array([True, False]))
    # the tiny face's anchors are ignored (-1), not background, when it is marked ignore
    near = (np.abs(axy[:, :2] - 10).max(1) < 8) & (labels == 1)
    assert (labels2[near] == -1).all()


def test_augment_flip_keeps_landmarks_inside_their_box():
    rng = np.random.default_rng(3)
    img = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[100.0, 50, 160, 130]])
    marks = np.array([[[115.0, 80], [145, 80], [130, 95], [118, 115], [142, 115]]])
    cfg = SSDTrainConfig(size=128, crop=128, scale_min=0.9, scale_max=1.1)
    for _ in range(10):
        im, b, m, ign = augment(rng, img, boxes, marks, cfg)
        assert im.shape == (128, 128, 3)
        if len(b) and not ign[0]:
            assert (m[0, :, 0] >= b[0, 0] - 1).all() and (m[0, :, 0] <= b[0, 2] + 1).all()
            assert m[0, 0, 0] < m[0, 1, 0]  # left eye stays left of the right eye


def test_registry_and_missing_weights(tmp_path, monkeypatch):
    assert {"ssd-mbv2", "ssd-mbv2-onnx"} <= set(available_detectors())
    det = get_detector("ssd-mbv2", weights=str(tmp_path / "none.pt"))
    with pytest.raises(WeightsError, match="not found"):
        det.detect(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(Exception, match="unknown options"):
        get_detector("ssd-mbv2", sizes=3)


def _synthetic_boxes(tmp_path, n=24):
    rng = np.random.default_rng(0)
    rows = []
    names = [f"im{i}.png" for i in range(n)]
    side = split_images(names)
    for name in names:
        if side[name] == "test":  # never to be opened: not even an image
            (tmp_path / name).write_bytes(b"not an image")
        else:
            img = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
            x, y = rng.integers(8, 60, 2)
            img[y : y + 28, x : x + 28] = (200, 170, 150)
            Image.fromarray(img).save(tmp_path / name)
        rows.append({"image": name, "x1": 8, "y1": 8, "x2": 36, "y2": 36, "label": "with_mask"})
    pd.DataFrame(rows).to_csv(tmp_path / "boxes.csv", index=False)
    return side


def test_mosaic_tiles_four_images_at_half_scale_and_keeps_each_box_in_its_tile():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(4):  # each image one flat colour with one face box in its middle
        img = np.full((200, 200, 3), 40 * (k + 1), np.uint8)
        samples.append((img, np.array([[80.0, 80, 120, 120]], np.float32),
                        np.full((1, 5, 2), np.nan, np.float32)))  # fmt: skip
    cfg = SSDTrainConfig(size=128, crop=128, scale_min=1.0, scale_max=1.0)
    _, fb, *_ = augment(rng, *samples[0], cfg)
    for _ in range(5):
        im, b, m, ign = mosaic(rng, samples, 0, cfg)
        assert im.shape == (128, 128, 3) and len(b) == len(m) == len(ign) <= 4
        for box in b:  # inside one 64 px tile, half the single-image width (20 vs 40 px at 128)
            col, row = int(box[0] // 64), int(box[1] // 64)
            assert box[2] <= 64 * (col + 1) + 1e-3 and box[3] <= 64 * (row + 1) + 1e-3
            assert box[2] - box[0] <= (fb[0, 2] - fb[0, 0]) / 2 + 1


def test_unannotated_faces_are_ignored_not_background(tmp_path):
    # the teacher's faces come from its cache (written here; no MTCNN pass): one overlaps the
    # annotated face, one lies inside it, one is free, one scores too low
    df = pd.DataFrame({"image": ["a.png"], "path": [str(tmp_path / "a.png")],
                       "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [50.0]})
    cache = tmp_path / "u.csv"
    pd.DataFrame({"image": ["a.png"] * 4, "x1": [12, 20, 100, 150], "y1": [12, 20, 100, 150],
                  "x2": [52, 35, 140, 190], "y2": [52, 35, 140, 190],
                  "score": [0.99, 0.99, 0.97, 0.6]}).to_csv(cache, index=False)
    free = unannotated_faces(df, cache, 0.95)
    np.testing.assert_allclose(free["a.png"], [[100, 100, 140, 140]])
    assert len(unannotated_faces(df, cache, 0.5)["a.png"]) == 2
    with pytest.raises(ConfigError, match="0.5, 1"):  # the cache holds faces from 0.5 up
        unannotated_faces(df, cache, 0.3)
    rng = np.random.default_rng(0)
    # the first box lies outside the image, so augment drops it: the flags must follow
    boxes = np.array([[300.0, 300, 340, 340], [10, 10, 50, 50], [100, 100, 140, 140]], np.float32)
    marks = np.full((3, 5, 2), np.nan, np.float32)
    cfg = SSDTrainConfig(size=200, crop=200, scale_min=1.0, scale_max=1.0)
    _, b, _, ign = augment(rng, np.zeros((200, 200, 3), np.uint8), boxes, marks, cfg,
                           np.array([True, False, True]))
    assert len(b) == 2 and ign.tolist() == [False, True]
    samples = [(np.zeros((200, 200, 3), np.uint8), boxes, marks, np.array([True, False, True]))] * 4
    _, b, _, ign = mosaic(rng, samples, 0, cfg)  # each tile keeps one annotated, one ignored face
    assert len(b) == 8 and ign.sum() == 4


def test_train_tiny_never_reads_test_images_and_onnx_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    side = _synthetic_boxes(tmp_path)
    assert "test" in side.values()
    cfg = SSDTrainConfig(boxes=str(tmp_path), out=str(tmp_path / "d.pt"), size=96, crop=64,
                         infer_size=128, epochs=1, batch_size=4, precision_target=0.5, mosaic=0.5)  # fmt: skip
    meta = train_ssd(cfg, progress=None)  # mosaic tiles draw from the training images only
    used = set(meta["train_image_names"])
    assert used and not {n for n, s in side.items() if s == "test"} & used
    assert meta["arch"] == "ssd-mbv2" and 0 <= meta["score_thresh"] <= 1
    # trained at the 96 px reference scale, runs (and was thresholded) at infer_size
    assert meta["size"] == 128 and meta["config"]["size"] == 96
    assert get_detector("ssd-mbv2", weights=str(tmp_path / "d.pt")).prepare().cfg.size == 128

    from facelab.detect.ssd_onnx import export_ssd, ssd_parity

    onnx = export_ssd(tmp_path / "d.pt", tmp_path / "d.onnx")
    assert ssd_parity(tmp_path / "d.pt", onnx) < 1e-3
    images = [np.asarray(Image.open(tmp_path / n)) for n in sorted(used)[:3]]
    images.append(np.zeros((50, 70, 3), np.uint8))  # another size in the same batch
    a = get_detector("ssd-mbv2", weights=str(tmp_path / "d.pt"), score_thresh=0.3)
    b = get_detector("ssd-mbv2-onnx", weights=str(tmp_path / "d.pt"), score_thresh=0.3)
    fa, fb = a.detect_batch(images), b.detect_batch(images)
    assert [len(x) for x in fa] == [len(x) for x in fb]
    for x, y in zip(fa, fb):
        for f, g in zip(x, y):
            np.testing.assert_allclose(f.box, g.box, atol=0.05)
    # a batch mixing portrait and landscape photos: canvases hold one shape each, and every
    # image gets exactly the faces it gets alone, in input order
    mixed = [images[0], np.ascontiguousarray(images[1].transpose(1, 0, 2)), images[2],
             np.ascontiguousarray(images[0].transpose(1, 0, 2))]  # fmt: skip
    low = get_detector("ssd-mbv2", weights=str(tmp_path / "d.pt"), score_thresh=0.002).prepare()
    canvases = []
    forward = low._forward
    low._forward = lambda canvas: canvases.append(canvas.shape) or forward(canvas)
    together = low.detect_batch(mixed)
    assert len({c[1:3] for c in canvases}) == len(canvases) == 4  # 2 shapes x (fine, coarse)
    assert all(together)  # faces to compare (a 1-epoch model, a low threshold)
    alone = [low.detect_batch([im])[0] for im in mixed]

    def found_in(faces, others):  # every face here is also there, at the same place
        return all(any(np.abs(np.subtract(f.box, g.box)).max() < 1e-2 for g in others) for f in faces)

    # batched convolutions differ from single ones by float noise, which can move a face whose
    # score sits at the threshold across it; a face at twice the threshold must be in both
    assert any(f.score >= 0.004 for faces in together for f in faces)  # something to compare
    for x, y in zip(together, alone):
        assert found_in([f for f in x if f.score >= 0.004], y)
        assert found_in([f for f in y if f.score >= 0.004], x)
    # usable in cascade specs like any backend
    union = detector_from_spec(f"ssd-mbv2(weights={tmp_path / 'd.pt'})|haar")
    assert isinstance(union.detect(images[0]), list)


@pytest.mark.skipif(not repo_weights().is_file(), reason="no committed src/facelab/weights/ssd-mbv2.pt")
def test_committed_weights_load_as_data_and_are_small():
    from facelab.detect.ssd import load_checkpoint

    assert repo_weights().stat().st_size <= 20 * 2**20
    meta = load_checkpoint(repo_weights())["meta"]
    assert meta["split"] == "image-hash" and meta["train_images"] > 0
    # the committed detector was trained on the training split only
    names = meta["train_image_names"]
    side = split_images(names)
    assert all(side[n] == "train" for n in names)


def test_merge_scales_prefers_the_coarse_face_over_its_parts():
    from facelab.detect.ssd import merge_scales
    from facelab.types import Face

    close_up = Face((10.0, 10.0, 190.0, 190.0), 0.7)  # coarse pass: the whole face
    parts = [Face((40.0, 50.0, 90.0, 100.0), 0.9), Face((110.0, 50.0, 160.0, 100.0), 0.8)]
    other = Face((300.0, 40.0, 330.0, 70.0), 0.6)  # a small face elsewhere: fine pass only
    dup = Face((12.0, 8.0, 188.0, 192.0), 0.95)  # the same face, fine pass: the coarse box wins
    out = merge_scales([*parts, other, dup], [close_up])
    assert [f.box for f in out] == [close_up.box, other.box]
    near = Face((150.0, 150.0, 250.0, 250.0), 0.9)  # overlaps, but mostly outside: NMS decides
    assert [f.box for f in merge_scales([near], [close_up])] == [near.box, close_up.box]
    assert merge_scales([other], []) == [other] and merge_scales([], [close_up]) == [close_up]


def _photo_folder(tmp_path, n=6):
    """Single-face photos (another 'data set') and a teacher cache labelling them, so the
    tiny run needs no MTCNN; one photo is rejected by the teacher (NaN row)."""
    from facelab.detect.paste import _COLS

    folder = tmp_path / "photos"
    folder.mkdir()
    rows = []
    for i in range(n):
        img = np.full((80, 80, 3), 40 + 10 * i, np.uint8)
        img[20:60, 24:56] = (210, 180, 160)
        path = folder / f"p{i}.png"
        Image.fromarray(img).save(path)
        box = [24, 20, 56, 60] if i else [np.nan] * 4
        marks = [32, 34, 48, 34, 40, 42, 34, 52, 46, 52] if i else [np.nan] * 10
        rows.append([str(path), *box, 0.99 if i else np.nan, *marks])
    pd.DataFrame(rows, columns=_COLS).to_csv(tmp_path / "teacher.csv", index=False)
    return folder


def test_paste_faces_adds_boxes_away_from_faces_and_keeps_landmarks_inside():
    from facelab.detect.evaluate import iou_matrix
    from facelab.detect.paste import FacePatch, paste_faces

    rng = np.random.default_rng(0)
    pix = np.full((60, 60, 3), 220, np.uint8)
    patch = FacePatch(pix, np.array([15.0, 15, 45, 45], np.float32),
                      np.array([[22, 25], [38, 25], [30, 32], [24, 40], [36, 40]], np.float32))  # fmt: skip
    canvas = np.zeros((128, 128, 3), np.uint8)
    face = np.array([[10.0, 10, 50, 50]], np.float32)
    for _ in range(20):
        c, b, m, ign = paste_faces(rng, canvas, face, np.full((1, 5, 2), np.nan, np.float32),
                                   np.zeros(1, bool), [patch], 3, min_face=10, max_face=30)  # fmt: skip
        assert len(b) == len(m) == len(ign) and 1 <= len(b) <= 4 and not ign[1:].any()
        np.testing.assert_array_equal(b[0], face[0])  # the scene's own face is kept as is
        new = b[1:]
        if len(new):
            assert iou_matrix(new, face).max() < 0.05
            w = new[:, 2] - new[:, 0]
            assert ((w >= 10 - 1e-3) & (w <= 30 + 1e-3)).all()
            inside = ((m[1:, :, 0] >= new[:, None, 0]) & (m[1:, :, 0] <= new[:, None, 2])).all()
            assert inside
            x1, y1, x2, y2 = new[0].round().astype(int)
            assert c[(y1 + y2) // 2, (x1 + x2) // 2].mean() > 150  # the face is really there
    assert canvas.max() == 0  # the input is not changed


def test_train_with_photos_never_reads_test_images(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    side = _synthetic_boxes(tmp_path)
    photos = _photo_folder(tmp_path)
    cfg = SSDTrainConfig(boxes=str(tmp_path), out=str(tmp_path / "d.pt"), size=96, crop=64,
                         infer_size=0, epochs=1, batch_size=4, precision_target=0.5, photos=[str(photos)],
                         teacher_cache=str(tmp_path / "teacher.csv"), paste_prob=1.0,
                         paste_mask=0.0, photo_share=0.5)  # fmt: skip
    meta = train_ssd(cfg, progress=None)
    assert meta["photo_faces"] == 5 and meta["photo_files"] == 6  # the rejected photo is left out
    assert meta["coarse"] == 160 and 0.05 <= meta["score_thresh"] < 1

    from facelab.detect.ssd_train import rethreshold

    assert meta["size"] == 96  # infer_size 0: runs at the reference size
    again = rethreshold(SSDTrainConfig(boxes=str(tmp_path), out=str(tmp_path / "d.pt"), infer_size=128,
                                       precision_target=0.5))  # fmt: skip
    assert again["size"] == 128 and again["photo_faces"] == 5  # the rest of the meta is kept
    assert get_detector("ssd-mbv2", weights=str(tmp_path / "d.pt")).prepare().cfg.size == 128
    kept = rethreshold(SSDTrainConfig(boxes=str(tmp_path), out=str(tmp_path / "d.pt"), precision_target=0.5))
    assert kept["size"] == 128  # no infer_size: the checkpoint keeps its own size
    assert not {n for n, s in side.items() if s == "test"} & set(meta["train_image_names"])

    from facelab.detect.paste import list_photos, teacher_labels
    from facelab.errors import DataFormatError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no image files"):
        list_photos([empty])
    labels = teacher_labels(sorted(photos.iterdir()), tmp_path / "teacher.csv")
    assert len(labels) == 5 and len(meta["teacher_box_offsets"]) == 4

    from facelab.detect.paste import load_photo_faces
    from facelab.detect.ssd_train import framing_offsets

    # teacher boxes move to the boxes CSV's framing: here 10% of the height lower
    off = framing_offsets(np.array([[0.0, 4, 40, 44], [10, 12, 30, 34]]),
                          np.array([[0.0, 0, 40, 40], [10, 10, 30, 30]]))  # fmt: skip
    np.testing.assert_allclose(off, [0, 0.1, 0, 0.15], atol=1e-9)
    (_, b0, _), _ = (x[0] for x in load_photo_faces(labels))
    (_, b1, _), p1 = (x[0] for x in load_photo_faces(labels, offsets=off))
    np.testing.assert_allclose(b1[0] - b0[0], [0, 4, 0, 6], atol=1e-4)  # 40 px box
    np.testing.assert_allclose(p1.box[3] - p1.box[1], 40 * 1.05, atol=1e-4)


def test_unmasked_repeat_draws_an_image_that_many_times_per_epoch():
    from facelab.detect.ssd_train import _Crops

    box = np.array([[20.0, 20, 60, 60]], np.float32)
    none = np.full((1, 5, 2), np.nan, np.float32)
    flags = np.zeros(1, bool)
    dark = (np.full((96, 96, 3), 10, np.uint8), box, none, flags)
    light = (np.full((96, 96, 3), 240, np.uint8), box, none, flags)
    cfg = SSDTrainConfig(size=96, crop=64, scale_min=1.0, scale_max=1.0, mosaic=0.0)
    data = _Crops([dark, light], cfg, repeats=[1, 3])
    assert len(data) == 4 and len(_Crops([dark, light], cfg)) == 2
    means = [float(data[i][0].float().mean()) for i in range(len(data))]
    assert means[0] < 60 and min(means[1:]) > 60  # the light image, three times (colour jitter moves means)
    assert len({round(m, 3) for m in means[1:]}) > 1  # each copy augmented afresh


def test_sizes_that_could_only_fail_late_are_refused_up_front(tmp_path):
    from facelab.detect.ssd_train import check_sizes

    for bad in ({"infer_size": -5}, {"infer_size": 8}, {"size": 0}, {"unmasked_repeat": 0}):
        with pytest.raises(ConfigError):
            check_sizes(SSDTrainConfig(**bad))
    check_sizes(SSDTrainConfig(infer_size=0))  # 0 = the training size
    # train_ssd refuses before reading any data (the boxes CSV does not exist)
    with pytest.raises(ConfigError, match="infer_size"):
        train_ssd(SSDTrainConfig(boxes=str(tmp_path / "none.csv"), infer_size=-5), progress=None)


@pytest.mark.skipif(not repo_weights().is_file(), reason="no committed src/facelab/weights/ssd-mbv2.pt")
@pytest.mark.parametrize("options", [{"size": 0}, {"coarse": 5}])
def test_a_detector_size_that_is_no_letterbox_is_refused(options):
    with pytest.raises(ConfigError, match="at least 32"):
        get_detector("ssd-mbv2", **options).prepare()
