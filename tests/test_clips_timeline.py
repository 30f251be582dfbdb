"""Sliding-window timelines on a generated long video: a red square is on screen from 5 s to
7 s of a 12 s video (the "fall"), a grey scene otherwise; GMDCSA24 segment parsing on the
real labels (skips when the data set is absent)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from facelab.clips import timeline
from facelab.clips.config import load_clip_config
from facelab.clips.dataset import from_csv
from facelab.clips.engine import fit
from facelab.clips.timeline import DetectConfig, detect_intervals, sliding_probs
from facelab.clips.video import decode_timed
from facelab.paths import missing_data

FPS = 10


def write_video(path: Path, seconds: float, red: tuple[float, float] | None, size: int = 32,
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * FPS)):
            img = rng.integers(60, 90, (size, size, 3), dtype=np.uint8)
            if red and red[0] <= i / FPS < red[1]:
                img[4:-4, 4:-4] = (230, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def red_share(frames: np.ndarray) -> np.ndarray:
    """A stand-in model: P(fall) = share of a window's frames that are mostly red."""
    f = frames.astype(int)
    red = ((f[..., 0] - f[..., 1]) > 100).mean((2, 3)) > 0.3  # (B, k)
    p = red.mean(1)
    return np.stack([1 - p, p], 1)


def test_decode_timed_keeps_at_most_fps(tmp_path):
    clip = write_video(tmp_path / "v.mp4", 4.0, None)
    frames, times = decode_timed(clip, 16, fps=2.5)
    assert frames.shape[1:] == (16, 16, 3) and times[0] == 0
    assert len(frames) == 10 and np.allclose(np.diff(times), 0.4, atol=0.02)
    assert len(decode_timed(clip, 16)[0]) == 40


def test_sliding_window_finds_the_event_and_no_false_alarm(tmp_path):
    clip = write_video(tmp_path / "long.mp4", 12.0, (5.0, 7.0))
    frames, times = decode_timed(clip, 32, fps=FPS)
    det = DetectConfig(window=2.0, hop=0.5, threshold=0.5, min_duration=0.0, merge_gap=1.0)
    tl = sliding_probs(frames, times, red_share, ["adl", "fall"], 4, det)
    assert len(tl) == len(timeline.window_starts(12.0, 2.0, 0.5)) == 21
    assert np.allclose(tl[["p_adl", "p_fall"]].sum(axis=1), 1)
    peak = tl.loc[tl["p_fall"].idxmax()]
    assert 5.0 <= peak["center"] <= 7.0 and peak["p_fall"] == 1.0
    iv = detect_intervals(tl, "fall", det)
    assert len(iv) == 1 and iv["start"][0] < 7.0 and iv["end"][0] > 5.0
    s = timeline.summarize([timeline.event_scores(list(zip(iv.start, iv.end)), [(5.0, 7.0)], 12.0)])
    assert s["recall"] == 1.0 and s["false_alarms"] == 0 and s["negative_s"] == 10.0
    # a threshold nothing reaches finds nothing; a video without the event gives no alarm
    assert detect_intervals(tl, "fall", DetectConfig(threshold=1.01)).empty
    quiet = write_video(tmp_path / "quiet.mp4", 6.0, None)
    f2, t2 = decode_timed(quiet, 32, fps=FPS)
    assert detect_intervals(sliding_probs(f2, t2, red_share, ["adl", "fall"], 4, det), "fall", det).empty
    # a motion crop sees the same event (the red square is what changes)
    tl_crop = sliding_probs(frames, times, red_share, ["adl", "fall"], 4, det, crop="motion", pool=8)
    assert len(detect_intervals(tl_crop, "fall", det)) == 1


def test_cli_timeline_writes_csv_png_intervals_and_goes_past_a_bad_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facelab.cli import _register, app

    monkeypatch.setenv("FACELAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "set"
    root.mkdir()
    rows = []
    for i in range(4):  # short training clips: red = fall, grey = adl
        write_video(root / f"f{i}.mp4", 2.0, (0.0, 2.0), seed=i)
        write_video(root / f"a{i}.mp4", 2.0, None, seed=10 + i)
        rows += [{"clip": f"f{i}.mp4", "label": "fall"}, {"clip": f"a{i}.mp4", "label": "adl"}]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    cfg = load_clip_config(None, ["data.size=32", "model.pretrained=", "model.freeze=0",
                                  "sampling.pool=4", "epochs=1", "batch_size=8"])
    fit(cfg, from_csv(root / "labels.csv"), tmp_path / "run")
    long = write_video(tmp_path / "long.mp4", 8.0, (3.0, 5.0))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    _register()
    out = tmp_path / "tl"
    r = CliRunner().invoke(app, ["clips", "predict", str(tmp_path / "run"), str(broken), str(long),
                                 "--timeline", str(out), "--window", "2", "--hop", "1",
                                 "--threshold", "0.0"])
    assert r.exit_code == 0, r.output
    tl = pd.read_csv(out / "long_timeline.csv")
    assert list(tl.columns) == ["start", "end", "center", "p_adl", "p_fall"] and len(tl) == 7
    assert np.allclose(tl[["p_adl", "p_fall"]].sum(axis=1), 1, atol=1e-5)
    assert (out / "long_timeline.png").stat().st_size > 1000
    iv = pd.read_csv(out / "intervals.csv", keep_default_na=False)
    assert "cannot open" in iv["error"][0] and str(broken) in iv["error"][0]
    # threshold 0: every window is positive, merged into one interval over the whole video
    ok = iv[iv["error"] == ""]
    assert len(ok) == 1 and float(ok["start"].iloc[0]) == 0.0 and float(ok["end"].iloc[0]) == 8.0
    assert "skipped" in r.output and "1 of 2 videos" in r.output
    r = CliRunner().invoke(app, ["clips", "predict", str(tmp_path / "run"), str(long),
                                 "--timeline", str(out), "--target", "walk"])
    assert r.exit_code == 2 and "not a class" in r.output


def test_gmdcsa24_fall_segments():
    reason = missing_data("gmdcsa24-fall")
    if reason:
        pytest.skip(reason)
    from facelab.clips.dataset import gmdcsa24

    t = gmdcsa24()
    falls = t["segments"].map(timeline.fall_segments)
    assert (falls[t["label"] == "fall"].map(len) >= 1).all()
    assert (falls[t["label"] == "adl"].map(len) == 0).all()
    assert all(0 <= a < b <= 13 for segs in falls for a, b in segs)
