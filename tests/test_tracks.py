"""Face tracks over video: association on synthetic boxes, per-track rows, the analyze path."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from facelab.analyze.tracks import (
    FaceTracker,
    Observation,
    compliance,
    iou_matrix,
    summarize_tracks,
    track_boxes,
)


def _box(x, y, s=40):
    return (x, y, x + s, y + s)


def test_iou_matrix_values():
    m = iou_matrix(np.array([_box(0, 0, 10)]), np.array([_box(0, 0, 10), _box(5, 0, 10),
                                                         _box(50, 50, 10)]))
    assert m.shape == (1, 3)
    assert m[0, 0] == pytest.approx(1.0)
    assert m[0, 1] == pytest.approx(50 / 150)
    assert m[0, 2] == 0


def test_crossing_faces_keep_their_tracks():
    # A moves right, B moves left, 10 px per frame, vertically offset by 10 px: they overlap
    # heavily while crossing, and are listed in alternating order
    frames = []
    for k in range(12):
        a, b = _box(10 + 10 * k, 50), _box(130 - 10 * k, 60)
        frames.append([a, b] if k % 2 == 0 else [b, a])
    ids = track_boxes(frames, iou_min=0.3, max_gap=1)
    a_ids = {fr[0] if k % 2 == 0 else fr[1] for k, fr in enumerate(ids)}
    b_ids = {fr[1] if k % 2 == 0 else fr[0] for k, fr in enumerate(ids)}
    assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids


def test_face_passing_a_still_face_keeps_its_track():
    # M walks through a standing face S (same size, 5 px lower); while they overlap, S's
    # box is closer to M's new box than M's previous box is
    frames = [[_box(70, 55), _box(10 + 10 * k, 50)] for k in range(14)]
    ids = track_boxes(frames, iou_min=0.3, max_gap=1)
    assert {fr[0] for fr in ids} == {0} and {fr[1] for fr in ids} == {1}


def test_gap_longer_than_max_gap_starts_new_track():
    seq = [[_box(10, 10)], [_box(12, 10)], [], [], [_box(14, 10)]]
    assert track_boxes(seq, max_gap=2) == [[0], [0], [], [], [0]]
    assert track_boxes(seq, max_gap=1) == [[0], [0], [], [], [1]]


def test_far_jump_is_a_new_track_but_embedding_can_link_it():
    tr = FaceTracker(iou_min=0.3, max_gap=2)
    assert tr.update([_box(0, 0)]) == [0]
    assert tr.update([_box(200, 200)]) == [1]
    e = np.array([1.0, 0.0, 0.0])
    tr = FaceTracker(iou_min=0.3, max_gap=2, max_distance=0.2)
    tr.update([_box(0, 0)], [e])
    assert tr.update([_box(200, 200), _box(300, 0)], [np.array([0.0, 1.0, 0.0]), e]) == [1, 0]


def test_summary_votes_and_compliance():
    def probs(mask):
        return {"mask": np.array(mask), "gender": np.array([0.2, 0.8]),
                "age": np.array([0.1, 0.7, 0.2])}

    obs = [Observation(0, 0.0, _box(0, 0), probs([0.9, 0.05, 0.05]), "ann"),
           Observation(0, 0.5, _box(2, 0), probs([0.8, 0.1, 0.1]), "ann"),
           Observation(0, 1.0, _box(4, 0), probs([0.2, 0.1, 0.7]), None),
           Observation(3, 0.5, _box(100, 0), probs([0.1, 0.1, 0.8]), None)]
    rows = summarize_tracks(obs, every=0.5, source="v.mp4")
    assert [r["track"] for r in rows] == [0, 3]
    r0 = rows[0]
    assert (r0["first_time"], r0["last_time"], r0["frames"]) == (0.0, 1.0, 3)
    assert r0["x1"] == pytest.approx(2.0)
    assert (r0["mask"], r0["gender"], r0["age"]) == ("correct", "female", "30-59")
    assert r0["mask_share_correct"] == pytest.approx(2 / 3, abs=1e-4)
    assert r0["mask_share_none"] == pytest.approx(1 / 3, abs=1e-4)
    assert r0["p_mask_correct"] == pytest.approx((0.9 + 0.8 + 0.2) / 3, abs=1e-4)
    assert (r0["identity"], r0["identity_share"]) == ("ann", pytest.approx(2 / 3, abs=1e-4))
    assert rows[1]["mask"] == "none" and rows[1]["identity"] == ""
    c = compliance(rows)
    # 4 frames x 0.5 s = 2 person-seconds, of which 2 frames x 0.5 s with a correct mask
    assert c == {"tracks": 2, "person_seconds": 2.0, "correct_seconds": 1.0, "share": 0.5}
    assert compliance(summarize_tracks([Observation(0, 0.0, _box(0, 0))], 1.0))["share"] is None


# -- the analyze path on a generated video --------------------------------------------------

W, H, FPS, SECONDS = 160, 120, 10, 3.0


def _write_video(path):
    """A red square drifting right the whole clip; a green one drifting left from t = 1 s."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for k in range(int(SECONDS * FPS)):
            img = np.full((H, W, 3), 30, np.uint8)
            x = 10 + k
            img[20:50, x:x + 30] = (230, 20, 20)
            if k >= FPS:
                x = 120 - k
                img[70:100, x:x + 30] = (20, 230, 20)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _colour_detector():
    from facelab.detect import Detector, register_detector
    from facelab.types import Face

    @register_detector("test-colour-squares")
    class ColourSquares(Detector):
        def _detect_one(self, image):
            im = image.astype(int)
            faces = []
            for ch in (0, 1):
                other = im[..., [c for c in range(3) if c != ch]].max(-1)
                ys, xs = np.nonzero((im[..., ch] > 150) & (other < 100))
                if len(xs) > 50:
                    faces.append(Face((float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                       float(ys.max() + 1)), 0.99))
            return faces

    return "test-colour-squares"


def test_analyze_video_writes_tracks(tmp_path):
    from facelab.analyze.analyzer import FaceAnalyzer
    from facelab.analyze.batch import analyze_paths

    video = tmp_path / "clip.mp4"
    _write_video(video)
    fa = FaceAnalyzer(_colour_detector())
    out, tracks, ann = tmp_path / "faces.csv", tmp_path / "tracks.csv", tmp_path / "ann"
    summary = analyze_paths(fa, [video], out, every=0.2, annotate=ann, tracks=tracks,
                            tracker_options={"max_gap": 1})
    assert summary.done == 1 and not summary.failed
    with open(tracks, newline="") as f:
        trows = list(csv.DictReader(f))
    assert len(trows) == 2
    red, green = sorted(trows, key=lambda r: float(r["first_time"]))
    assert float(red["first_time"]) == pytest.approx(0.0)
    assert float(red["last_time"]) == pytest.approx(2.8, abs=0.11)
    assert float(green["first_time"]) == pytest.approx(1.0, abs=0.11)
    assert float(green["last_time"]) == pytest.approx(2.8, abs=0.11)
    assert int(red["frames"]) == 15 and int(green["frames"]) == 10
    assert float(red["y1"]) < 30 and float(green["y1"]) > 60
    assert summary.compliance[str(video)]["tracks"] == 2
    assert summary.compliance[str(video)]["person_seconds"] == pytest.approx(25 * 0.2)
    assert summary.compliance[str(video)]["share"] is None  # no attribute run
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert "track" in rows[0]
    by_track = {}
    for r in rows:
        by_track.setdefault(r["track"], []).append(float(r["y1"]))
    assert sorted(by_track) == sorted({red["track"], green["track"]})
    # each track keeps to its own square (red at the top, green at the bottom)
    assert max(by_track[red["track"]]) < 30 and min(by_track[green["track"]]) > 60
    assert (ann / "clip.mp4.mp4").stat().st_size > 0


def test_cli_tracks_option_prints_compliance(tmp_path):
    from typer.testing import CliRunner

    from facelab.cli import _register, app

    _register()
    video = tmp_path / "clip.mp4"
    _write_video(video)
    det = _colour_detector()
    res = CliRunner().invoke(app, ["analyze", str(video), "--detector", det, "--every", "0.5",
                                   "-o", str(tmp_path / "f.csv"), "--tracks",
                                   str(tmp_path / "t.csv"), "--track-gap", "0"])
    assert res.exit_code == 0, res.output
    assert "2 track(s), 5 person-seconds" in res.output  # (6 + 4 frames) x 0.5 s
    with open(tmp_path / "t.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
