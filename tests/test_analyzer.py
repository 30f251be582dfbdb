"""A trained run as one object, the face analyzer, `facelab analyze`, ONNX export (issue 11)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from facelab.data.labels import TASKS
from facelab.types import Face


@pytest.fixture
def photos(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        arr = rng.integers(0, 255, (60 + 10 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"p{i}.png")
    return folder


def test_in_memory_image_gives_the_cache_pixels_and_predict_probabilities(tiny_run, photos):
    """One image in memory is preprocessed exactly as the cache does, and
    facelab.load(run).predict_image(img) equals `facelab predict` on the same file."""
    import facelab
    from facelab.data.cache import PixelCache
    from facelab.predict.predict import folder_table, input_table, predict_table

    run = facelab.load(tiny_run)
    table = folder_table(photos)
    cache = PixelCache.build(table, run.settings)
    img = facelab.load_image(photos / "p1.png")
    assert np.array_equal(run.preprocess(img), cache.pixels[1])
    preds, bad = predict_table(tiny_run, table)
    one = run.predict_image(img)
    for t in TASKS:
        cols = [c for c in preds.columns if c.startswith(f"p_{t}_")]
        assert np.allclose(one.probs[t], preds.loc[1, cols].to_numpy(float), atol=1e-6)
    # a face box: the boxes-CSV cache path and predict_image(img, face) agree too
    csv = photos / "boxes.csv"
    pd.DataFrame({"image": ["p1.png"], "x1": [5], "y1": [8], "x2": [40], "y2": [50]}).to_csv(csv, index=False)
    boxed = PixelCache.build(input_table(boxes=str(csv)), run.settings)
    assert np.array_equal(run.preprocess(img, (5, 8, 40, 50)), boxed.pixels[0])


def test_predict_csv_needs_no_labels_and_marks_degenerate_inputs(tiny_run, photos):
    from conftest import run_cli

    Image.new("RGB", (1, 1)).save(photos / "tiny.png")
    csv = photos / "faces.csv"
    pd.DataFrame({"image": ["p0.png", "tiny.png", "p1.png", "p2.png", "p0.png"],
                  "x1": [0, "", 500, "inf", 0], "y1": [0, "", 500, 0, 0],
                  "x2": [30, "", 600, 10, 1e6], "y2": [30, "", 600, 10, 1e6]}).to_csv(csv, index=False)
    proc = run_cli("predict", str(tiny_run), "--csv", str(csv), "-o", "out.csv", cwd=photos)
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(photos / "out.csv")
    # tiny image, a box outside the image, an infinite box: not ok; a huge box is clipped, ok
    assert out["ok"].tolist() == [True, False, False, False, True]
    bad = pd.read_csv(photos / "out_unreadable.csv")
    assert bad["error"].str.contains("too small|outside|not finite").all() and len(bad) == 3
    (photos / "empty.csv").write_text("image\n")
    proc = run_cli("predict", str(tiny_run), "--csv", str(photos / "empty.csv"), cwd=photos)
    assert proc.returncode == 2 and "no rows" in proc.stderr and "Traceback" not in proc.stderr


def test_onnx_export_matches_pytorch_and_int8_runs(tiny_run, photos):
    from facelab.predict.backends import OnnxBackend
    from facelab.predict.export import export_onnx, quantize_int8
    from facelab.predict.run import AttributeRun

    run = AttributeRun.load(tiny_run, tta=True)
    onnx = AttributeRun.load(tiny_run, tta=True, backend="onnx")
    images = [photos / f"p{i}.png" for i in range(3)]
    a, b = run.predict_batch(images), onnx.predict_batch(images)
    diff = max(float(np.abs(x.probs[t] - y.probs[t]).max()) for x, y in zip(a, b) for t in TASKS)
    assert diff < 1e-4, diff
    pixels = np.stack([run.preprocess(p) for p in images] * 4)
    q = quantize_int8(run, pixels, tiny_run / "model.int8.onnx", export_onnx(run))
    out = OnnxBackend(q)(pixels[:3])
    assert all(np.allclose(out[t].sum(1), 1, atol=1e-3) for t in TASKS)
    assert AttributeRun.load(tiny_run, backend="onnx-int8").backend.name == "onnx-int8"


def test_face_analyzer_stages(tiny_run, photos):
    from facelab.analyze import FaceAnalyzer

    fa = FaceAnalyzer(None, attributes=tiny_run, embedder="pixels")
    faces = fa.analyze(photos / "p0.png")
    assert len(faces) == 1 and faces[0].face.stage == "whole"
    rec = faces[0].to_dict(with_embedding=True)
    assert rec["mask"] in ("correct", "incorrect", "none") and 0 <= rec["class18"] < 18
    assert len(rec["embedding"]) == 128 and rec["x2"] == 50
    same = fa.run.predict_image(photos / "p0.png").probs  # a crop is read as predict reads it
    assert all(np.allclose(faces[0].attributes.probs[t], same[t], atol=1e-6) for t in TASKS)
    # a real detector on a photo with no face: no records, not a guess
    none = FaceAnalyzer("haar", attributes=tiny_run).analyze(np.full((120, 120, 3), 128, np.uint8))
    assert none == []


def _video(path: Path, frames: int = 6, faststart: bool = False) -> None:
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            arr = np.full((48, 64, 3), 20 * i % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_analyze_cli_images_video_bad_files_resume(tiny_run, photos, tmp_path):
    from conftest import run_cli

    _video(photos / "clip.mp4")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "empty.mp4").write_bytes(b"\x00" * 100)
    args = ["analyze", str(photos), "--run", str(tiny_run), "--detector", "none", "--every", "0.5",
            "-o", "faces.csv", "--annotate", "ann"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "faces.csv")
    assert set(df["source"].map(lambda s: Path(s).name)) == {"p0.png", "p1.png", "p2.png", "clip.mp4"}
    assert (df["source"].str.endswith("clip.mp4")).sum() == 3  # 1.5 s at 4 fps, every 0.5 s
    errors = pd.read_csv(tmp_path / "faces.csv.errors.csv")
    assert sorted(errors["source"].map(lambda s: Path(s).name)) == ["broken.jpg", "empty.mp4"]
    assert (tmp_path / "ann" / "clip.mp4.mp4").is_file() and (tmp_path / "ann" / "p0.png.jpg").is_file()
    assert len(list((tmp_path / "ann").rglob("*.jpg"))) == 3
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "4 already done" in again.stdout
    assert len(pd.read_csv(tmp_path / "faces.csv")) == len(df)  # nothing duplicated
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.png").write_bytes(b"junk")
    proc = run_cli("analyze", str(bad_only), "--detector", "none", "-o", "b.jsonl", cwd=tmp_path)
    assert proc.returncode == 1 and "1 failed" in proc.stdout


def test_huge_image_is_a_clear_error_and_the_folder_keeps_going(tmp_path):
    from facelab.analyze import FaceAnalyzer
    from facelab.analyze.batch import analyze_paths

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (20000, 20000)).save(folder / "huge.png", optimize=False)
    Image.new("RGB", (40, 40), (100, 80, 60)).save(folder / "ok.png")
    summary = analyze_paths(FaceAnalyzer(None, embedder="pixels"), [folder], tmp_path / "o.jsonl")
    assert summary.done == 1 and "too large" in summary.failed[str(folder / "huge.png")]
    row = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert row["faces"] == 1 and row["source"].endswith("ok.png")


def test_audio_only_and_truncated_videos_are_clear_errors_and_the_batch_goes_on(tmp_path):
    # found trying hostile files as a user: an audio-only .mp4 stopped the whole batch with
    # an IndexError, and a cut-off recording was analysed in part without a word
    import av

    from facelab.analyze import FaceAnalyzer
    from facelab.analyze.batch import analyze_paths

    folder = tmp_path / "in"
    folder.mkdir()
    with av.open(str(folder / "voice.mp4"), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for _ in range(8):
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    _video(folder / "whole.mp4", frames=40, faststart=True)  # index first: a cut file opens
    data = (folder / "whole.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    summary = analyze_paths(FaceAnalyzer(None, embedder="pixels"), [folder], tmp_path / "o.csv",
                            every=0.5)
    song = tmp_path / "song.m4a"  # given by name: neither image nor video
    song.write_bytes((folder / "voice.mp4").read_bytes())
    one = analyze_paths(FaceAnalyzer(None, embedder="pixels"), [song], tmp_path / "s.csv")
    assert "neither an image nor a video" in one.failed[str(song)]
    assert summary.done == 2 and set(summary.failed) == {str(folder / "voice.mp4")}
    assert "no video stream" in summary.failed[str(folder / "voice.mp4")]
    # the cut recording keeps the rows of the frames that decode, and says it is partial
    note = summary.partial[str(folder / "cut.mp4")]
    assert "of its 40 frames decode" in note and str(folder / "whole.mp4") not in summary.partial
    rows = pd.read_csv(tmp_path / "o.csv")
    n_cut, n_whole = (rows["source"] == str(folder / "cut.mp4")).sum(), (rows["source"] == str(folder / "whole.mp4")).sum()
    assert 0 < n_cut < n_whole == 20  # 10 s at 4 fps, every 0.5 s


LAYERS = ["train", "evaluate", "predict", "models", "data"]


def _imports(package: str) -> set[str]:
    """facelab packages imported anywhere (module level or inside functions) by `package`."""
    root = Path(__file__).parents[1] / "src" / "facelab" / package
    found = set()
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found |= {n.split(".")[1] for n in names if n.startswith("facelab.")}
    return found - {package}


def test_import_graph_has_no_cycle_and_inference_never_imports_training():
    for i, pkg in enumerate(LAYERS):
        higher = set(LAYERS[:i])
        assert not (_imports(pkg) & higher), f"{pkg} imports {_imports(pkg) & higher}"
    assert "train" not in _imports("embed") | _imports("facedb") | _imports("analyze")
    for a in ("train", "predict", "evaluate", "embed"):
        for b in ("train", "predict", "evaluate", "embed"):
            assert not (a != b and b in _imports(a) and a in _imports(b)), (a, b)


def test_detection_on_a_huge_photo_runs_downscaled_and_maps_boxes_back():
    """A 9000x9000 photo is detected at the detector's max side, boxes in original pixels."""
    from facelab.detect.base import Detector

    seen = []

    class Fixed(Detector):
        def _detect_one(self, image):
            seen.append(image.shape)
            return [Face((100.0, 100.0, 300.0, 300.0), 0.9, np.array([[150.0, 150.0]] * 5))]

    big = np.zeros((9000, 6000, 3), np.uint8)
    (face,) = Fixed("fixed").detect(big)
    assert seen == [(2048, 1365, 3)]
    scale = 9000 / 2048
    assert np.allclose(face.box, [100 * scale, 100 * scale, 300 * scale, 300 * scale])
    assert np.allclose(face.landmarks[0], [150 * scale, 150 * scale])
    assert Fixed("fixed").detect(np.zeros((50, 40, 3), np.uint8))[0].box == (100.0, 100.0, 300.0, 300.0)


def test_mtcnn_nets_export_to_onnx_with_parity(tmp_path):
    from facelab.detect.base import get_detector
    from facelab.detect.onnx_export import export_mtcnn, parity

    det = get_detector("mtcnn")
    paths = export_mtcnn(det, tmp_path / "mtcnn")
    gaps = parity(det, paths)
    assert set(gaps) == {"pnet", "rnet", "onet"} and max(gaps.values()) < 1e-4, gaps


def test_mobilefacenet_exports_to_onnx_with_parity(tmp_path):
    import onnxruntime as ort

    from facelab.embed.mobilefacenet import MobileFaceNet, MobileFaceNetEmbedder

    net = MobileFaceNet(64, 0.25).eval()
    torch.save({"model": net.state_dict(), "config": {"dim": 64, "width": 0.25}, "epoch": 1},
               tmp_path / "mfn.pt")
    emb = MobileFaceNetEmbedder(tmp_path / "mfn.pt")
    path = emb.export_onnx(tmp_path / "mfn.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 112, 112)).astype(np.float32)
    with torch.inference_mode():
        ref = emb.model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"faces": x})[0]
    assert np.abs(ref - got).max() < 1e-4


def test_face_analyzer_looks_faces_up_in_the_database(tmp_path):
    from conftest import synthetic_person, write_image

    from facelab.analyze import FaceAnalyzer
    from facelab.facedb.db import FaceDB, FaceDBConfig

    db = FaceDB.init(tmp_path / "faces.db", FaceDBConfig(embedder="pixels", detector="whole",
                                                         fallback="whole"))
    db.enroll("ada", [write_image(tmp_path / "ada0.png", synthetic_person(1, 0))])
    fa = FaceAnalyzer(None, db=db)
    (known,) = fa.analyze(synthetic_person(1, 1))
    (stranger,) = fa.analyze(synthetic_person(7, 0))
    assert known.identity == "ada" and known.distance < db.threshold
    assert stranger.identity is None and stranger.nearest == "ada" and stranger.distance > db.threshold
    assert {"identity", "nearest", "distance"} <= set(known.to_dict())
